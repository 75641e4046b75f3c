// The CUDA runtime API for the CUDA backend's sources: the toolkit's under
// nvcc and in the GPU build, the CPU emulation of the execution model
// (engine/cuda/emu/) where MOESERVE_CUDA_EMU is defined (the emulated build
// of the same sources, run in CI).
#pragma once

#if defined(MOESERVE_CUDA_EMU)
#include "engine/cuda/emu/cuda_emu.h"
#else
#include <cuda_runtime.h>
#endif
