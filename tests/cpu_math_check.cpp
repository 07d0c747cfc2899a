// Accuracy of the CPU kernels' float exp / exp2 / log (csrc/include/snn_fast/surrogate.h) against
// double libm, over every STRIDE-th float of each function's domain (argv[1], default 61).
// Prints "name max_rel_err worst_x" per function, then the special values; tests/test_cpu_math.py
// compiles and runs it.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "snn_fast/surrogate.h"

using namespace snn_fast::detail;

// The float k representable values above x (x finite; steps through −0 to +0 by ordinal).
static float step_up(float x, uint32_t k) {
  int32_t i;
  std::memcpy(&i, &x, 4);
  int64_t ord = i < 0 ? -int64_t(i & 0x7fffffff) : int64_t(i);  // monotone in x
  ord += k;
  const int32_t j = ord < 0 ? int32_t(uint32_t(-ord) | 0x80000000u) : int32_t(ord);
  std::memcpy(&x, &j, 4);
  return x;
}

template <typename F, typename G>
static void scan(const char* name, float lo, float hi, uint32_t stride, F f, G ref) {
  double worst = 0;
  float wx = lo;
  auto check = [&](float x) {
    const double r = ref(double(x)), e = std::fabs(double(f(x)) - r) / std::fabs(r);
    if (!(e <= worst)) worst = e, wx = x;  // NaN counts as worst
  };
  for (float x = lo; x < hi; x = step_up(x, stride)) check(x);
  check(hi);
  std::printf("%s %.6g %.9g\n", name, worst, wx);
}

int main(int argc, char** argv) {
  const uint32_t stride = argc > 1 ? uint32_t(std::atoi(argv[1])) : 61;
  scan("exp_poly", -87.3f, 88.37f, stride, [](float x) { return exp_poly(x); },
       [](double x) { return std::exp(x); });
  scan("exp2_poly_nonpos", -126.0f, 0.0f, stride, [](float x) { return exp2_poly_nonpos(x); },
       [](double x) { return std::exp2(x); });
  scan("log_poly", 1.0f, 3.0e38f, stride, [](float x) { return log_poly(x); }, [](double x) { return std::log(x); });
  std::printf("nan_propagates %d %d %d\n", int(std::isnan(exp_poly(NAN))), int(std::isnan(exp2_poly_nonpos(NAN))),
              int(std::isnan(log_poly(NAN))));
  std::printf("clamped %.17g %.17g\n", double(exp2_poly_nonpos(-126.0f)), double(exp_poly_nonpos(-87.3f)));
  std::printf("flushed %.17g %.17g %.17g %.17g %.17g\n", double(exp2_poly_nonpos(-126.5f)),
              double(exp2_poly_nonpos(-INFINITY)), double(exp_poly_nonpos(-87.4f)), double(exp_poly(-INFINITY)),
              double(exp_poly_nonpos(-1000.0f)));
  std::printf("exact %.9g %.9g\n", exp2_poly_nonpos(0.0f), exp_poly(0.0f));
  return 0;
}
