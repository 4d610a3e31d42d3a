// svdq/svdq.hpp — the public API in one include. Test helpers (synthetic layers, the quantized
// activations of a forward) are in svdq/testing.hpp, which this does not include.
#pragma once

#include "svdq/calibration.hpp"
#include "svdq/checkpoint.hpp"
#include "svdq/cpu_linear.hpp"
#include "svdq/formats.hpp"
#include "svdq/gpu.hpp"
#include "svdq/linear.hpp"
#include "svdq/metrics.hpp"
#include "svdq/nunchaku.hpp"
#include "svdq/stats.hpp"
#include "svdq/status.hpp"
#include "svdq/types.hpp"
#include "svdq/version.hpp"
