"""Export (ONNX, TorchScript), the torch-free runtime, the HTTP server and the studio."""
