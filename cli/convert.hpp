// cli/convert.hpp — `svdq convert --from nunchaku | --to nunchaku` (cli/convert.cpp).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace svdq_cli {

/// Adds the `convert` subcommand to `app`; the returned function runs it (after parsing, when
/// the subcommand was given) and returns the process exit code.
std::function<int()> register_convert(CLI::App& app);

}  // namespace svdq_cli
