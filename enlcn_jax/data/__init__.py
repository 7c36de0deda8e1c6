"""Images in: reading and writing, MATLAB bicubic resizing, dataset sources, the dihedral
transforms, the training input pipeline and the datasets a training config names.
"""
