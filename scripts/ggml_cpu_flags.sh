# CMake flags for llama.cpp's CPU backend, shared by scripts/install.sh (the llama-cpp-python wheel)
# and bench/build_llama_server.sh (the llama-server baseline), so both are built alike.
#
# Not GGML_NATIVE (-march=native): on Intel Sapphire Rapids it turns on AMX, whose tile registers
# a VM may not enable, and the first decode dies with SIGILL ("invalid opcode" in libggml-cpu.so);
# a wheel built natively on one machine may also not run on the next (the wheel cache outlives
# machines). AVX2 + FMA + F16C runs on every x86-64 server of the last decade, AMD and Intel.
GGML_CPU_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
GGML_CPU_CMAKE_ARGS="$GGML_CPU_CMAKE_ARGS -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
# The wheel cache folder is named after these flags: a wheel built with other flags is never reused.
GGML_CPU_FLAVOR=avx2
