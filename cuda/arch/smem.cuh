// cuda/arch/smem.cuh — how a kernel declares and touches shared memory, the same source for nvcc
// and for the host emulation.
//
//   struct Smem { arch::smem_array<int32_t, 64, 17> a; arch::smem_array<float, 64> s; };
//   Smem& sm = arch::shared<Smem>();          // static shared memory, one instance per CTA
//   sm.a[r][c] = v;  float x = sm.s[r];        // element access
//   arch::smem_span<float> d = arch::dynamic_shared<float>();   // dynamic shared memory
//
// Under nvcc, smem_array is a plain array in a `__shared__` buffer and an element access is a
// plain reference (no cost). Under SVDQ_EMU (g++ cannot place `static __shared__` template
// variables per CTA), shared<S>() returns the CTA's instance from the runtime's per-CTA arena and
// every element access goes through a proxy that checks each index against its extent and tells
// the runtime (bounds, barrier-interval race check, pending cp.async). Raw addresses (`.ptr()`)
// are for instructions (cp.async, ldmatrix) whose host bodies report their own accesses.
// Contract for kernels: shared memory is only touched through these types.
#pragma once

#include <cstdio>

#include "config.cuh"

namespace svdq::arch {

#if SVDQ_ARCH_HOST
/// A checked reference to one shared element (host emulation only).
template <typename T>
class smem_ref {
 public:
  explicit smem_ref(T* p) : p_(p) {}
  operator T() const {  // NOLINT: a load
    emu::note_shared_access(p_, sizeof(T), false, "shared load");
    return *p_;
  }
  const smem_ref& operator=(const T& v) const {
    emu::note_shared_access(p_, sizeof(T), true, "shared store");
    *p_ = v;
    return *this;
  }
  const smem_ref& operator=(const smem_ref& o) const { return *this = static_cast<T>(o); }
  template <typename U> const smem_ref& operator+=(const U& v) const { return *this = static_cast<T>(static_cast<T>(*this) + v); }
  template <typename U> const smem_ref& operator-=(const U& v) const { return *this = static_cast<T>(static_cast<T>(*this) - v); }
  template <typename U> const smem_ref& operator*=(const U& v) const { return *this = static_cast<T>(static_cast<T>(*this) * v); }
  template <typename U> const smem_ref& operator|=(const U& v) const { return *this = static_cast<T>(static_cast<T>(*this) | v); }
  template <typename U> const smem_ref& operator&=(const U& v) const { return *this = static_cast<T>(static_cast<T>(*this) & v); }
  template <typename U> const smem_ref& operator^=(const U& v) const { return *this = static_cast<T>(static_cast<T>(*this) ^ v); }
  T load() const { return static_cast<T>(*this); }
  /// The raw shared address (for instructions that report their own accesses).
  T* ptr() const { return p_; }

 private:
  T* p_;
};
template <typename T> using smem_elem = smem_ref<T>;
namespace detail {
inline void check_index(long long i, long long extent) {
  if (i < 0 || i >= extent) {
    char msg[96];
    std::snprintf(msg, sizeof msg, "index %lld out of the array extent [0, %lld)", i, extent);
    emu::fail("shared-memory access out of bounds", msg);
  }
}
}  // namespace detail
#define SVDQ_SMEM_CHECK(i, n) ::svdq::arch::detail::check_index(i, n)
#define SVDQ_SMEM_ELEM(p) ::svdq::arch::smem_ref<T>(p)
#else
template <typename T> using smem_elem = T&;
#define SVDQ_SMEM_CHECK(i, n) ((void)0)
#define SVDQ_SMEM_ELEM(p) (*(p))
#endif

template <typename T, int... Ds> struct smem_view;

/// The last dimension: indexing gives an element.
template <typename T, int D0>
struct smem_view<T, D0> {
  T* p;
  SVDQ_HD smem_elem<T> operator[](int i) const {
    SVDQ_SMEM_CHECK(i, D0);
    return SVDQ_SMEM_ELEM(p + i);
  }
  SVDQ_HD T* ptr() const { return p; }
};

/// An outer dimension: indexing gives the next view.
template <typename T, int D0, int D1, int... Ds>
struct smem_view<T, D0, D1, Ds...> {
  T* p;
  static constexpr int kInner = (D1 * ... * Ds);
  SVDQ_HD smem_view<T, D1, Ds...> operator[](int i) const {
    SVDQ_SMEM_CHECK(i, D0);
    return smem_view<T, D1, Ds...>{p + i * kInner};
  }
  SVDQ_HD T* ptr() const { return p; }
};

/// A shared array of extents Ds..., a member of a kernel's shared-memory struct.
template <typename T, int... Ds>
struct smem_array {
  static constexpr int kSize = (Ds * ...);
  alignas(16) T data_[kSize];
  SVDQ_HD decltype(auto) operator[](int i) { return smem_view<T, Ds...>{data_}[i]; }
  SVDQ_HD T* ptr() { return data_; }
};

/// A run-time sized shared array (dynamic shared memory).
template <typename T>
struct smem_span {
  T* p;
  int n;
  SVDQ_HD smem_elem<T> operator[](int i) const {
    SVDQ_SMEM_CHECK(i, n);
    return SVDQ_SMEM_ELEM(p + i);
  }
  SVDQ_HD T* ptr() const { return p; }
  SVDQ_HD int size() const { return n; }
};

#if SVDQ_ARCH_HOST
namespace detail {
template <typename S> inline char shared_key = 0;
}
#endif

/// The CTA's static shared instance of S (a struct of smem_arrays). Every call with the same S in
/// one CTA returns the same object.
template <typename S>
SVDQ_DEV S& shared() {
#if SVDQ_ARCH_HOST
  return *static_cast<S*>(emu::static_shared(&detail::shared_key<S>, sizeof(S), alignof(S)));
#else
  __shared__ alignas(alignof(S)) unsigned char storage[sizeof(S)];
  return *reinterpret_cast<S*>(storage);
#endif
}

/// The CTA's dynamic shared memory (the launch's dynamic bytes) as an array of T.
template <typename T>
SVDQ_DEV smem_span<T> dynamic_shared() {
#if SVDQ_ARCH_HOST
  size_t bytes = 0;
  T* p = static_cast<T*>(emu::dynamic_shared(&bytes));
  return smem_span<T>{p, static_cast<int>(bytes / sizeof(T))};
#else
  extern __shared__ __align__(16) unsigned char svdq_dynamic_smem[];
  unsigned bytes;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(bytes));  // PTX special register: no intrinsic
  return smem_span<T>{reinterpret_cast<T*>(svdq_dynamic_smem), static_cast<int>(bytes / sizeof(T))};
#endif
}

}  // namespace svdq::arch

#undef SVDQ_SMEM_CHECK
#undef SVDQ_SMEM_ELEM
