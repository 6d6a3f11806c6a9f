// Declarations only; see ../README.md.
#pragma once

#include <chrono>

namespace gloo {
class Context {
 public:
  // Named by an inline method of ProcessGroupGloo that only libtorch's own code calls.
  void setTimeout(std::chrono::milliseconds timeout);
};
} // namespace gloo
