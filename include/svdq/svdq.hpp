// svdq/svdq.hpp — everything public in one include.
#pragma once

#include "svdq/calibration.hpp"
#include "svdq/checkpoint.hpp"
#include "svdq/formats.hpp"
#include "svdq/gpu.hpp"
#include "svdq/linear.hpp"
#include "svdq/metrics.hpp"
#include "svdq/nunchaku.hpp"
#include "svdq/stats.hpp"
#include "svdq/status.hpp"
#include "svdq/synth.hpp"
#include "svdq/types.hpp"
#include "svdq/version.hpp"
