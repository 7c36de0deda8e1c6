"""Images in: reading and writing, MATLAB bicubic resizing, dataset sources, the dihedral
transforms and the training input pipeline.
"""
