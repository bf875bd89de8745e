// Host-side helpers for the kernel and plugin tests: realistic random inputs and the float64 sequential
// reference of rfa::CausalGatedScan (docs/op_contract.md), independent of the kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace rfa_test
{

enum class Gate
{
    kNone,
    kRandom, // 0.5 .. 0.999
    kNear0,  // 1e-7 .. 1e-3
    kNear1,  // 1 - 1e-7 .. 1 - 1e-3
    kExact   // a mix of exactly 0, exactly 1 and random
};

inline char const* gateName(Gate g)
{
    switch (g)
    {
    case Gate::kNone: return "ungated";
    case Gate::kRandom: return "random";
    case Gate::kNear0: return "near0";
    case Gate::kNear1: return "near1";
    default: return "exact0/1";
    }
}

struct Problem
{
    int B, T, H, F, Dv;
    Gate gate;
    bool initialState;
    std::vector<double> q, k, v, g, s0; // g empty when ungated; s0 empty when absent
};

// q/k as the model makes them: sin/cos features of random unit vectors through one fixed random matrix per
// head (F = 2D), so q . z is a positive kernel sum on average and well conditioned. With exact 0/1 gates a
// reset leaves a single q . k term in den, which sin/cos features can make ~0 (ill-conditioned in any
// precision); that case uses arc-cosine (ReLU) features, q . k >= 0.
// clamp: every output row in the normaliser's clamp (ReLU features, an initial z < 0, gates near 1 keep
// den < 0), with the upper half of the value columns 8x larger, so each row's max |num| lies there.
inline Problem makeProblem(int B, int T, int H, int F, int Dv, Gate gate, bool initialState, uint64_t seed,
    bool clamp = false)
{
    Problem p{B, T, H, F, Dv, gate, initialState, {}, {}, {}, {}, {}};
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal;
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    bool const relu = gate == Gate::kExact || clamp;
    int const D = relu ? F : F / 2, d = 8;
    std::vector<double> w(size_t(H) * D * d);
    for (auto& x : w)
    {
        x = normal(rng);
    }
    auto features = [&](std::vector<double>& out) {
        out.resize(size_t(B) * T * H * F);
        std::vector<double> x(d);
        for (size_t row = 0; row < size_t(B) * T * H; ++row)
        {
            int const h = int(row % H);
            double norm = 0;
            for (auto& e : x)
            {
                e = normal(rng);
                norm += e * e;
            }
            norm = std::sqrt(norm);
            for (int j = 0; j < D; ++j)
            {
                double proj = 0;
                for (int e = 0; e < d; ++e)
                {
                    proj += w[(size_t(h) * D + j) * d + e] * x[e] / norm;
                }
                if (relu)
                {
                    out[row * F + j] = std::max(proj, 0.0) * std::sqrt(2.0 / D);
                }
                else
                {
                    out[row * F + j] = std::sin(proj) / std::sqrt(double(D));
                    out[row * F + D + j] = std::cos(proj) / std::sqrt(double(D));
                }
            }
        }
    };
    features(p.q);
    features(p.k);
    p.v.resize(size_t(B) * T * H * Dv);
    for (size_t i = 0; i < p.v.size(); ++i)
    {
        p.v[i] = normal(rng) * (clamp && int(i % Dv) >= Dv / 2 ? 8.0 : 1.0);
    }
    if (gate != Gate::kNone)
    {
        p.g.resize(size_t(B) * T * H);
        for (size_t i = 0; i < p.g.size(); ++i)
        {
            double const u = uniform(rng);
            switch (gate)
            {
            case Gate::kRandom: p.g[i] = 0.5 + 0.499 * u; break;
            case Gate::kNear0: p.g[i] = std::pow(10.0, -7.0 + 4.0 * u); break;
            case Gate::kNear1: p.g[i] = 1.0 - std::pow(10.0, -7.0 + 4.0 * u); break;
            default: p.g[i] = (i % 3 == 0) ? 0.0 : (i % 3 == 1 ? 1.0 : 0.5 + 0.499 * u); break;
            }
        }
    }
    if (initialState)
    {
        p.s0.resize(size_t(B) * H * F * (Dv + 1));
        for (size_t i = 0; i < p.s0.size(); ++i)
        {
            bool const zColumn = (i % (Dv + 1)) == size_t(Dv);
            double const z = 0.5 + std::fabs(normal(rng));
            p.s0[i] = zColumn ? (clamp ? -z : z) : 0.1 * normal(rng);
        }
    }
    return p;
}

// Round every activation to the storage type (the reference then sees exactly what the kernel sees).
template <typename T>
double roundTo(double x);
template <>
inline double roundTo<float>(double x)
{
    return double(float(x));
}
template <>
inline double roundTo<__half>(double x)
{
    return double(__half2float(__float2half_rn(float(x))));
}
template <>
inline double roundTo<__nv_bfloat16>(double x)
{
    return double(__bfloat162float(__float2bfloat16_rn(float(x))));
}

template <typename T>
void roundActivations(Problem& p)
{
    for (auto* vec : {&p.q, &p.k, &p.v, &p.g})
    {
        for (auto& x : *vec)
        {
            x = roundTo<T>(x);
        }
    }
    for (auto& x : p.s0)
    {
        x = double(float(x));
    }
}

// out [B, T, H, Dv], state [B, H, F, Dv + 1]; S and z kept apart, one step at a time.
inline void reference(Problem const& p, double eps, std::vector<double>& out, std::vector<double>& state)
{
    int const B = p.B, T = p.T, H = p.H, F = p.F, Dv = p.Dv, cols = Dv + 1;
    out.assign(size_t(B) * T * H * Dv, 0.0);
    state.assign(size_t(B) * H * F * cols, 0.0);
    std::vector<double> S(size_t(F) * Dv), z(F), num(Dv);
    for (int b = 0; b < B; ++b)
    {
        for (int h = 0; h < H; ++h)
        {
            size_t const sb = (size_t(b) * H + h) * F * cols;
            for (int f = 0; f < F; ++f)
            {
                for (int d = 0; d < Dv; ++d)
                {
                    S[size_t(f) * Dv + d] = p.s0.empty() ? 0.0 : p.s0[sb + size_t(f) * cols + d];
                }
                z[f] = p.s0.empty() ? 0.0 : p.s0[sb + size_t(f) * cols + Dv];
            }
            for (int t = 0; t < T; ++t)
            {
                size_t const row = (size_t(b) * T + t) * H + h;
                double const* q = &p.q[row * F];
                double const* k = &p.k[row * F];
                double const* v = &p.v[row * Dv];
                double const keep = p.g.empty() ? 1.0 : p.g[row];
                double const write = p.g.empty() ? 1.0 : 1.0 - p.g[row];
                std::fill(num.begin(), num.end(), 0.0);
                double den = 0;
                for (int f = 0; f < F; ++f)
                {
                    for (int d = 0; d < Dv; ++d)
                    {
                        double& s = S[size_t(f) * Dv + d];
                        s = keep * s + write * k[f] * v[d];
                        num[d] += q[f] * s;
                    }
                    z[f] = keep * z[f] + write * k[f];
                    den += q[f] * z[f];
                }
                double m = 0;
                for (double x : num)
                {
                    m = std::max(m, std::fabs(x));
                }
                double const denC = std::max(den, eps * m);
                for (int d = 0; d < Dv; ++d)
                {
                    out[row * Dv + d] = denC > 0 ? num[d] / denC : 0.0;
                }
            }
            for (int f = 0; f < F; ++f)
            {
                for (int d = 0; d < Dv; ++d)
                {
                    state[sb + size_t(f) * cols + d] = S[size_t(f) * Dv + d];
                }
                state[sb + size_t(f) * cols + Dv] = z[f];
            }
        }
    }
}

// max |got - ref| / max |ref|; NaN or inf in `got` counts as an infinite error.
template <typename G>
double relErr(std::vector<G> const& got, std::vector<double> const& ref)
{
    double diff = 0, scale = 0;
    for (size_t i = 0; i < ref.size(); ++i)
    {
        double const x = double(got[i]);
        if (!std::isfinite(x))
        {
            return INFINITY;
        }
        diff = std::max(diff, std::fabs(x - ref[i]));
        scale = std::max(scale, std::fabs(ref[i]));
    }
    return scale > 0 ? diff / scale : diff;
}

template <typename T>
std::vector<T> toStorage(std::vector<double> const& x);
template <>
inline std::vector<float> toStorage<float>(std::vector<double> const& x)
{
    return std::vector<float>(x.begin(), x.end());
}
template <>
inline std::vector<__half> toStorage<__half>(std::vector<double> const& x)
{
    std::vector<__half> r(x.size());
    for (size_t i = 0; i < x.size(); ++i)
    {
        r[i] = __float2half_rn(float(x[i]));
    }
    return r;
}
template <>
inline std::vector<__nv_bfloat16> toStorage<__nv_bfloat16>(std::vector<double> const& x)
{
    std::vector<__nv_bfloat16> r(x.size());
    for (size_t i = 0; i < x.size(); ++i)
    {
        r[i] = __float2bfloat16_rn(float(x[i]));
    }
    return r;
}

template <typename T>
std::vector<double> fromStorage(std::vector<T> const& x)
{
    std::vector<double> r(x.size());
    for (size_t i = 0; i < x.size(); ++i)
    {
        if constexpr (std::is_same<T, float>::value)
        {
            r[i] = x[i];
        }
        else if constexpr (std::is_same<T, __half>::value)
        {
            r[i] = __half2float(x[i]);
        }
        else
        {
            r[i] = __bfloat162float(x[i]);
        }
    }
    return r;
}

// int8-row states (docs/op_contract.md, "State dtype"), computed in float64 from the rule itself: a row of
// `cols` entries becomes cols codes and one exponent e, the least with 127 * 2^e >= max |x|, in [-120, 120].
inline int int8RowExponent(double m)
{
    int e = -120;
    while (e < 120 && 127.0 * std::ldexp(1.0, e) < m)
    {
        ++e;
    }
    return e;
}

inline std::vector<int8_t> toInt8Rows(std::vector<double> const& x, int cols)
{
    size_t const rows = x.size() / cols;
    std::vector<int8_t> r(rows * (cols + 1));
    for (size_t i = 0; i < rows; ++i)
    {
        double m = 0;
        for (int c = 0; c < cols; ++c)
        {
            m = std::max(m, std::fabs(x[i * cols + c]));
        }
        int const e = int8RowExponent(m);
        for (int c = 0; c < cols; ++c)
        {
            double const code = std::nearbyint(x[i * cols + c] * std::ldexp(1.0, -e)); // ties to even
            r[i * (cols + 1) + c] = int8_t(std::min(127.0, std::max(-127.0, code)));
        }
        r[i * (cols + 1) + cols] = int8_t(e);
    }
    return r;
}

inline std::vector<double> fromInt8Rows(std::vector<int8_t> const& x, int cols)
{
    size_t const rows = x.size() / (cols + 1);
    std::vector<double> r(rows * cols);
    for (size_t i = 0; i < rows; ++i)
    {
        int const e = x[i * (cols + 1) + cols];
        for (int c = 0; c < cols; ++c)
        {
            r[i * cols + c] = std::ldexp(double(x[i * (cols + 1) + c]), e);
        }
    }
    return r;
}

// The largest error of a stored int8-row state against the unrounded reference, in units of what the
// contract allows each entry: half its row's code step (at most max |row| / 127) plus tol of the whole
// state's largest entry (fp32's error). At most 1 when the state holds to the contract.
inline double int8RowsErr(std::vector<int8_t> const& got, std::vector<double> const& ref, int cols, double tol)
{
    std::vector<double> const x = fromInt8Rows(got, cols);
    double scale = 0;
    for (double r : ref)
    {
        scale = std::max(scale, std::fabs(r));
    }
    double worst = 0;
    for (size_t i = 0; i < ref.size() / cols; ++i)
    {
        double m = 0;
        for (int c = 0; c < cols; ++c)
        {
            m = std::max(m, std::fabs(ref[i * cols + c]));
        }
        double const allowed = m / 127 + tol * scale;
        for (int c = 0; c < cols; ++c)
        {
            double const d = std::fabs(x[i * cols + c] - ref[i * cols + c]);
            worst = std::max(worst, std::isfinite(d) ? (allowed > 0 ? d / allowed : (d > 0 ? INFINITY : 0)) : INFINITY);
        }
    }
    return worst;
}

} // namespace rfa_test
