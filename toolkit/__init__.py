"""HPC distributed-training toolkit: the invariance layer (C++/CUDA ops) and DaSGD on Horovod."""
__version__ = "0.1.0"
