"""RFA attention layers: causal self-attention with a recurrent state, and non-causal attention."""

from typing import Optional, Tuple, Union

import torch
from torch import nn

from ..ops.causal_gated_scan import DEFAULT_EPS, causal_gated_scan, causal_gated_scan_
from ..ops.cross_read import cross_read
from ..ops.decode_attention import decode_attention_step_
from ..ops.dispatch import native_inference
from .feature_maps import RandomFeatureMap
from .linear_layers import (PartialSums, linear, linear_after_residual_norm, linear_dropout,
                            linear_projecting_features, linear_projecting_features_after_residual_norm)
from .residual_norm import residual_norm


class _RFAHeads(nn.Module):
    """Projections, head split and random feature map shared by the causal and non-causal layers."""

    def __init__(self, d_model: int, n_heads: int, feature_map: str, num_features: int,
                 orthogonal: bool, eps: float, dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.n_heads, self.head_dim, self.eps = n_heads, d_model // n_heads, eps
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.o_proj = nn.Linear(d_model, d_model)
        self.phi = RandomFeatureMap(feature_map, n_heads, self.head_dim, num_features, orthogonal)
        self.dropout = nn.Dropout(dropout)

    def heads(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] -> [B, T, H, dh]"""
        return proj(x).unflatten(-1, (self.n_heads, self.head_dim))

    def heads_of(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """heads() through ops/decode_linear's linear (the decode-sized kernel on the CUDA inference path)."""
        return linear(x, proj.weight, proj.bias).unflatten(-1, (self.n_heads, self.head_dim))

    def merge(self, out: torch.Tensor, partial_sums: bool = False) -> Union[torch.Tensor, PartialSums]:
        """[B, T, H, dh] -> [B, T, d_model] through the output projection; partial_sums: see linear."""
        return linear_dropout(out.flatten(-2), self.o_proj.weight, self.o_proj.bias, self.dropout, partial_sums)


class CausalRFASelfAttention(_RFAHeads):
    """Causal multi-head RFA with the optional gate g = sigmoid(w_g . x + b_g), one scalar per head and step.

    The state of a layer is one fp32 tensor [B, H, F, dh + 1] (docs/op_contract.md).
    """

    def __init__(self, d_model: int, n_heads: int, feature_map: str = "gaussian", num_features: int = 32,
                 orthogonal: bool = True, gated: bool = True, eps: float = DEFAULT_EPS, dropout: float = 0.0):
        super().__init__(d_model, n_heads, feature_map, num_features, orthogonal, eps, dropout)
        self.gate = nn.Linear(d_model, n_heads) if gated else None

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, inplace_state: bool = False,
                partial_sums: bool = False) -> Tuple[Union[torch.Tensor, PartialSums], torch.Tensor]:
        """
        Args:
            x: [B, T, d_model]; state: [B, H, F, dh + 1] fp32 or bf16, [B, H, F, dh + 2] int8 rows, or None
                (zeros);
            attention_mask: [B, T], nonzero where a token is real, 0 where it is padding. A masked step
                leaves the state unchanged.
            inplace_state: update `state` in place (decoding loops; not for training or export).
            partial_sums: y may be the output projection's PartialSums (model/linear_layers.py), for a
                residual_norm to add up.
        Returns:
            y [B, T, d_model], new state [B, H, F, dh + 1].
        """
        if native_inference(x, *self._projection_params()):  # one GEMM for q, k, v and the gate
            decoding = x.shape[1] == 1 and inplace_state and state is not None
            y, proj = self._fused_projection(x, decoding)
            return self._attend_projected(y, proj, state, attention_mask, inplace_state, partial_sums)
        qk = torch.stack([self.heads(self.q_proj, x), self.heads(self.k_proj, x)])
        v = self.heads(self.v_proj, x)
        g = self.gate(x) if self.gate is not None else None
        return self._scan(qk, v, g, x.dtype, state, attention_mask, inplace_state, partial_sums)

    def forward_residual(self, x: torch.Tensor, y: Union[torch.Tensor, PartialSums, None], norm: nn.LayerNorm,
                         state: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                         inplace_state: bool = False, partial_sums: bool = False):
        """forward(norm(x + y), ...) with the residual add before it -> (x + y, output, new state); y: a tensor
        like x, a linear layer's PartialSums, or None (x alone). At one row on CUDA, the add and the norm run
        inside the q/k/v projection's kernel where it takes the inputs (decoding, with the feature projections:
        linear_projecting_features_after_residual_norm; else linear_after_residual_norm)."""
        if native_inference(x, *self._projection_params()):
            weight, bias = self.fused_projection_params()
            fused = None
            if x.shape[1] == 1 and inplace_state and state is not None:
                fused = linear_projecting_features_after_residual_norm(x, y, norm.weight, norm.bias, norm.eps, weight,
                                                                       bias, self.phi.sigma, self.phi.w_tilde)
            if fused is None:
                plain = linear_after_residual_norm(x, y, norm.weight, norm.bias, norm.eps, weight, bias)
                fused = None if plain is None else (*plain, None)
            if fused is not None:
                x, projected, proj = fused
                return (x, *self._attend_projected(projected, proj, state, attention_mask, inplace_state,
                                                   partial_sums))
        x, h = residual_norm(x, y, norm)
        return (x, *self.forward(h, state, attention_mask, inplace_state, partial_sums))

    def _attend_projected(self, y: torch.Tensor, proj: Optional[torch.Tensor], state, attention_mask,
                          inplace_state: bool, partial_sums: bool):
        """The layer from its fused projection y [B, T, 3 d_model (+ H)] and proj (_fused_projection's)."""
        if y.shape[1] == 1 and inplace_state and state is not None:
            out = self._fused_decode_step(y, state, attention_mask, proj)
            if out is not None:
                return self.merge(out[:, None], partial_sums), state
        qk, v, g = self._split_projection(y)
        return self._scan(qk, v, g, y.dtype, state, attention_mask, inplace_state, partial_sums)

    def _scan(self, qk, v, g, dtype: torch.dtype, state, attention_mask, inplace_state: bool, partial_sums: bool):
        """The layer from qk [2, B, T, H, dh], v [B, T, H, dh] and the gate logits [B, T, H] or None; dtype: the
        input's, that of the padding mask's factors."""
        # q and k through one feature-map call: half the kernels of a decode step
        q_feat, k_feat = self.phi(qk).unbind(0)
        g = torch.sigmoid(g) if g is not None else None
        if attention_mask is not None:
            keep = (attention_mask != 0).to(dtype).unsqueeze(-1)  # [B, T, 1]
            k_feat = k_feat * keep.unsqueeze(-1)
            if g is not None:
                g = g * keep + (1.0 - keep)
        if inplace_state and state is not None:
            out = causal_gated_scan_(q_feat, k_feat, v, g, state, self.eps)
        else:
            out, state = causal_gated_scan(q_feat, k_feat, v, g, state, self.eps)
        return self.merge(out, partial_sums), state

    def _projections(self):
        return [self.q_proj, self.k_proj, self.v_proj] + ([self.gate] if self.gate is not None else [])

    def _projection_params(self):
        return [t for lin in self._projections() for t in (lin.weight, lin.bias)]

    def _fused_projection(self, x: torch.Tensor, feature_projections: bool = False):
        """q, k, v and the gate logits through one GEMM (inference on CUDA: decoding is launch-bound):
        [B, T, d_model] -> ([B, T, 3 d_model (+ H)], proj), through fused_projection_params. feature_projections: the GEMM
        may also project q and k for the decode step kernel (linear_projecting_features); proj is None
        otherwise."""
        weight, bias = self.fused_projection_params()
        if feature_projections:
            return linear_projecting_features(x, weight, bias, self.phi.sigma, self.phi.w_tilde)
        return linear(x, weight, bias), None

    def fused_projection_params(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The q, k, v (and gate) projections as one weight [3 d_model (+ H), d_model] and bias, cached and
        rebuilt whenever a source parameter changes (its storage or version counter)."""
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in self._projection_params())
        if getattr(self, "_fused_key", None) != key:
            linears = self._projections()
            self._fused_weight = torch.cat([lin.weight for lin in linears]).detach()
            self._fused_bias = torch.cat([lin.bias for lin in linears]).detach()
            self._fused_key = key
        return self._fused_weight, self._fused_bias

    def _split_projection(self, y: torch.Tensor):
        """[B, T, 3 d_model (+ H)] -> qk [2, B, T, H, dh], v [B, T, H, dh], gate logits [B, T, H] or None (views)."""
        d = self.n_heads * self.head_dim
        qk = y[..., : 2 * d].unflatten(-1, (2, self.n_heads, self.head_dim)).movedim(-3, 0)
        v = y[..., 2 * d : 3 * d].unflatten(-1, (self.n_heads, self.head_dim))
        return qk, v, (y[..., 3 * d :] if self.gate is not None else None)

    def _fused_decode_step(self, y: torch.Tensor, state: torch.Tensor, attention_mask: Optional[torch.Tensor],
                           proj: Optional[torch.Tensor] = None):
        """One decoding step (T = 1) as one kernel: features, gate and scan step, `state` updated in place;
        proj: q's and k's projections from the GEMM that made y, or None. Returns out [B, H, dh], or None
        where the kernel does not take these inputs (the caller then runs the composed path)."""
        d = self.n_heads * self.head_dim
        row = y[:, 0]
        q, k, v = (row[:, i * d : (i + 1) * d].unflatten(-1, (self.n_heads, self.head_dim)) for i in range(3))
        gate_logits = row[:, 3 * d :] if self.gate is not None else None
        keep = None if attention_mask is None else attention_mask[:, 0].to(torch.int64)
        phi = self.phi
        # the kernels launched since the projection (y) wrote neither the state nor W~
        return decode_attention_step_(q, k, v, gate_logits, phi.sigma, phi.w_tilde, phi.kind, state, self.eps, keep,
                                      overlap_state_load=True, proj=proj)


class RFAAttention(_RFAHeads):
    """Non-causal multi-head RFA: encoder self-attention (memory = x) or cross-attention.

    The keys and values are summarised into a state [B_mem, H, F, Dv + 1] (S | z, the causal layer's layout:
    S = sum_s phi(k_s) v_s^T, z = sum_s phi(k_s) over the real memory positions), and every query reads it:
    out = readout(phi(q)^T S, phi(q) . z). A decoder computes its cross states once per source
    (memory_state) and reads them at each step (read)."""

    def __init__(self, d_model: int, n_heads: int, feature_map: str = "gaussian", num_features: int = 32,
                 orthogonal: bool = True, eps: float = DEFAULT_EPS, dropout: float = 0.0):
        super().__init__(d_model, n_heads, feature_map, num_features, orthogonal, eps, dropout)

    def memory_state(self, memory: torch.Tensor, memory_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """memory [B, S, d_model], memory_mask [B, S] (nonzero for real positions) -> state [B, H, F, Dv + 1]
        in fp32 (float64 for float64 memory)."""
        acc = torch.float64 if memory.dtype == torch.float64 else torch.float32
        k_feat = self.phi(self.heads(self.k_proj, memory)).to(acc)  # [B, S, H, F]
        v = self.heads(self.v_proj, memory).to(acc)  # [B, S, H, Dv]
        if memory_mask is not None:
            k_feat = k_feat * (memory_mask != 0).to(acc)[:, :, None, None]
        v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # value' = [v, 1]: z rides along as column Dv
        return torch.matmul(k_feat.permute(0, 2, 3, 1), v1.transpose(1, 2))  # [B, H, F, S] @ [B, H, S, Dv + 1]

    def read(self, x: torch.Tensor, state: torch.Tensor, partial_sums: bool = False) -> Union[torch.Tensor, PartialSums]:
        """x [B, T, d_model] queries, state [B_mem, H, F, Dv + 1] with B a multiple of B_mem: the rows of x
        are grouped by memory row, B / B_mem contiguous rows each (beams of one source share its state,
        which is never copied per row) -> [B, T, d_model]."""
        phi = self.phi
        out = cross_read(self.heads_of(self.q_proj, x), phi.sigma, phi.w_tilde, phi.kind, state, self.eps)
        return self.merge(out, partial_sums)

    def forward(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None,
                memory_mask: Optional[torch.Tensor] = None, partial_sums: bool = False) -> Union[torch.Tensor, PartialSums]:
        """
        Args:
            x: [B, Tq, d_model] queries; memory: [B, Tk, d_model] keys/values (default x);
            memory_mask: [B, Tk], nonzero for real memory positions.
        Returns:
            [B, Tq, d_model]
        """
        return self.read(x, self.memory_state(x if memory is None else memory, memory_mask), partial_sums)
