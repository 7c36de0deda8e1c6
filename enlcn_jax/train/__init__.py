"""Training: the recipe (state, schedules, loss, the jitted step), the config checks, the loop,
what it saves, the workdir and its metric log.
"""
