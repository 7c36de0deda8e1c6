"""What is written and read back: atomic files, model directories and training checkpoints."""
