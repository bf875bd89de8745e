// CUDA_CHECK for the native test programs: print the failing call and exit 2.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

#define CUDA_CHECK(x)                                                                                                 \
    do                                                                                                                \
    {                                                                                                                 \
        cudaError_t e_ = (x);                                                                                         \
        if (e_ != cudaSuccess)                                                                                        \
        {                                                                                                             \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));                  \
            std::exit(2);                                                                                             \
        }                                                                                                             \
    } while (0)
