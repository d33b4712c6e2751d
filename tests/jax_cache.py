"""Environment for test subprocesses that repeat one run: a JAX compilation cache folder shared by
them, so the first run compiles and the later ones reuse its executables (keeps the tests fast;
what they check is unchanged, the executables being the same)."""


def compile_cache_env(folder) -> dict[str, str]:
    return {"JAX_COMPILATION_CACHE_DIR": str(folder), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
