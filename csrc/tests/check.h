// The C++ tests' failure counter and CHECK(cond, printf-format, ...): a failed check prints "FAIL <message>"
// and counts; main() reports the count and returns non-zero (report_failures).
#pragma once
#include <cstdio>

inline int failures = 0;

#define CHECK(cond, ...)        \
  do {                          \
    if (!(cond)) {              \
      std::printf("FAIL ");     \
      std::printf(__VA_ARGS__); \
      std::printf("\n");        \
      ++failures;               \
    }                           \
  } while (0)
