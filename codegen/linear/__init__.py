"""The LINEAR / KERNEL and DECAYED / GATED families (SPEC §1): kernel linear attention
(Katharopoulos, Performer, spectral features), RetNet, GLA, Mamba's selective scan.

- ``torch_impl``: :func:`linear_attention` (quadratic, recurrent and chunked algorithms) and
  :func:`selective_scan`;
- ``chunked``: the chunked algorithm (intra-chunk quadratic or scan form, state passing);
- ``features``: the feature maps φ;
- ``reference``: the literal recurrences, for tests;
- ``bench``: ``python -m codegen.linear.bench``, timings against the plain-PyTorch baselines.
"""
