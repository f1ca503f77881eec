"""Engines behind the scripts: the inference session and the rendering engine (plan, tiling, chunked queries,
CMSR), evaluation, training loops, ONNX export, and the script layer (arguments, errors, process groups)."""
