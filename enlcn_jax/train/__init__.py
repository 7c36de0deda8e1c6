"""Training: the recipe (state, schedules, loss, the jitted step), the loop and its periodic
actions, the workdir and its metric log.
"""
