// Element-wise sigmoid focal loss and its derivative, shared by CPU and CUDA.
// With p = sigmoid(x) and q = 1 - p = sigmoid(-x):
//   positive: L = -alpha * q^gamma * log(p)
//             dL/dx = alpha * q^gamma * (gamma * p * log(p) - q)
//   negative: L = -(1 - alpha) * p^gamma * log(q)
//             dL/dx = (1 - alpha) * p^gamma * (p - gamma * q * log(q))
// log(p) and log(q) are log-sigmoids (min(x, 0) - log1p(exp(-|x|))), finite for
// every x; one exp and one log1p per element. Both branches are evaluated and
// one is selected, so CPU loops vectorise. Ignored elements (target < 0) are
// handled by the callers.
//
// Policies: `Math` provides exp_nonpositive(y <= 0) and log1p_unit(e in [0, 1]);
// `Pow` provides pow(base, gamma).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace atss {

struct StdMath {
  template <typename T>
  C10_HOST_DEVICE static T exp_nonpositive(T y) { return std::exp(y); }
  template <typename T>
  C10_HOST_DEVICE static T log1p_unit(T e) { return std::log1p(e); }
};

// base^gamma with the common exponents done by multiplication.
struct PowAny {
  template <typename T>
  C10_HOST_DEVICE static T pow(T base, T gamma) {
    if (gamma == T(2)) return base * base;
    if (gamma == T(1)) return base;
    if (gamma == T(0)) return T(1);
    return std::pow(base, gamma);
  }
};

// gamma == 2 (the default of every ATSS config): no branch, for vectorised loops.
struct PowTwo {
  template <typename T>
  C10_HOST_DEVICE static T pow(T base, T) { return base * base; }
};

template <typename T>
struct SigmoidTerms {
  T p, q, log_p, log_q;
};

template <typename T, typename Math>
C10_HOST_DEVICE inline SigmoidTerms<T> sigmoid_terms(T x) {
  const T e = Math::exp_nonpositive(-std::fabs(x));  // in (0, 1]
  const T inv = T(1) / (T(1) + e);
  const T l = Math::log1p_unit(e);
  const bool nonneg = x >= T(0);
  return {nonneg ? inv : e * inv, nonneg ? e * inv : inv, nonneg ? -l : x - l,
          nonneg ? -x - l : -l};
}

template <typename T, typename Math, typename Pow>
C10_HOST_DEVICE inline T focal_loss_value(T x, bool positive, T gamma, T alpha) {
  const SigmoidTerms<T> s = sigmoid_terms<T, Math>(x);
  const T pos = -alpha * Pow::pow(s.q, gamma) * s.log_p;
  const T neg = -(T(1) - alpha) * Pow::pow(s.p, gamma) * s.log_q;
  return positive ? pos : neg;
}

template <typename T, typename Math, typename Pow>
C10_HOST_DEVICE inline T focal_loss_grad(T x, bool positive, T gamma, T alpha) {
  const SigmoidTerms<T> s = sigmoid_terms<T, Math>(x);
  const T pos = alpha * Pow::pow(s.q, gamma) * (gamma * s.p * s.log_p - s.q);
  const T neg = (T(1) - alpha) * Pow::pow(s.p, gamma) * (s.p - gamma * s.q * s.log_q);
  return positive ? pos : neg;
}

}  // namespace atss
