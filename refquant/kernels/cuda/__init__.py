"""kernels/cuda"""
