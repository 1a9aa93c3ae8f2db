// Which sanitizer this translation unit is built with, for GCC and Clang alike:
// MXSCHED_TSAN / MXSCHED_ASAN are defined (to 1) under ThreadSanitizer / AddressSanitizer.
// Internal: not installed.
#ifndef MXSCHED_BASE_SANITIZERS_H_
#define MXSCHED_BASE_SANITIZERS_H_

#if defined(__SANITIZE_THREAD__)
#define MXSCHED_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MXSCHED_TSAN 1
#endif
#endif

#if defined(__SANITIZE_ADDRESS__)
#define MXSCHED_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MXSCHED_ASAN 1
#endif
#endif

#endif  // MXSCHED_BASE_SANITIZERS_H_
