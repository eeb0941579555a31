"""The PyTorch backend: emit.py writes a module's source from the layer graph, runtime.py
holds the ordinary layers, mixers.py the calls to the mixer families."""
