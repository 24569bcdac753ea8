"""The engine: the decode loop, loading, closing, threads, the prefix cache and the gate."""
