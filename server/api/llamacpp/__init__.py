"""llama.cpp server extensions, under the paths and shapes its users know."""
