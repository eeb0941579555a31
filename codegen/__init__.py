"""Backends that lower the layer graph to code (torch, triton): one folder per mixer family.

Nothing is lowered yet: the lowering is tracked in its own issues. The package exists so
that the layout (seqdsl/ front end and analysis, codegen/ backends) is fixed from the start.
"""
