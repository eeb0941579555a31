"""``seqdsl analyze complexity``: the exact symbolic cost of every layer and algorithm.

Memory-hierarchy model (how ``hbm_bytes`` is counted)
-----------------------------------------------------
Two levels, as in the FlashAttention paper (Dao et al. 2022, §3.2): a large, slow main
memory (HBM on a GPU, DRAM on a CPU) and an on-chip memory of ``SRAM`` elements (shared
memory per SM; the L2 cache of a core). An op reads each input from main memory once
and writes its output once, unless its algorithm says otherwise:

- materialised softmax attention writes and reads the N×N score and probability
  matrices: Θ(Nd + N²) (the paper's Algorithm 0: e·(io + 4·G·Nq·Nk));
- tiled softmax keeps a query tile of B = SRAM/(4d) rows on chip and streams the key
  tiles the mask needs: Θ(Nd + N²d²·s/M) for a mask of tile density s (Theorem 2 and
  its block-sparse corollary);
- chunked linear attention reads q, k, v once and writes each chunk's d_k×d_v state out
  and back once: Θ(Nd + N·d²/C);
- FFT convolution reads u and the kernel and writes y once (the transforms run on chip
  per channel): Θ(N·C); chunked FFT with state passing the same, with a kernel of one
  chunk; a scan keeps the state on chip: Θ(N·C).

``SRAM`` stays a symbol in the formulas; its value comes from the machine model
(:mod:`seqdsl.analysis.select`). Elements are 4 bytes (fp32) unless a mix says
``dtype = fp16 | bf16`` (2 bytes).

Activation memory: a layer's ``activation_bytes`` is its output plus the workspace it
holds while running. The model's total is the sum over layers (every output is kept
for the backward pass, as in training).

Dims without a value count as 1 in ``values`` (and in the algorithm choice).
"""

from __future__ import annotations

from seqdsl.analysis.report import LayerReport, Report, analyze_graph, big_o

__all__ = ["LayerReport", "Report", "analyze_graph", "big_o"]
