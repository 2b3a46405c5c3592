# Configures, builds and runs the consumer project in tests/install/consumer
# against the installed prefix only (install_prefix.cmake made it). Any failing
# step fails the test.
#
# Run with cmake -P and these variables:
#   UNDERSTUDY_BUILD_CONFIG, UNDERSTUDY_PREFIX,
#   CONSUMER_SOURCE_DIR, CONSUMER_BINARY_DIR, CONSUMER_GENERATOR,
#   CONSUMER_CXX_COMPILER, CONSUMER_CXX_COMPILER_LAUNCHER (may be empty),
#   CONSUMER_COMPONENTS (comma-separated, e.g. "runtime,actors"),
#   CONSUMER_HIDE_CUDA (comma-separated CUDA toolkit roots, e.g. "/usr/local/cuda";
#     empty for none): the consumer is configured with those made unfindable
#     (ignored prefixes and directories, no CUDACXX, CUDA_PATH, CUDA_HOME) and
#     checks that the CUDA toolkit is indeed not found.
#   CONSUMER_EXECUTABLE (default understudy_consumer): the program it builds and runs,
#   CONSUMER_ARGS (optional): its arguments, one string split like a shell would.
cmake_minimum_required(VERSION 3.20)

foreach(var UNDERSTUDY_PREFIX CONSUMER_SOURCE_DIR CONSUMER_BINARY_DIR CONSUMER_GENERATOR
            CONSUMER_CXX_COMPILER CONSUMER_COMPONENTS)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: ${var} is not set")
  endif()
endforeach()
if(NOT UNDERSTUDY_BUILD_CONFIG)
  set(UNDERSTUDY_BUILD_CONFIG Release)
endif()
if(NOT EXISTS "${UNDERSTUDY_PREFIX}")
  message(FATAL_ERROR "run_consumer.cmake: ${UNDERSTUDY_PREFIX} is not installed")
endif()
string(REPLACE "," ";" components "${CONSUMER_COMPONENTS}")
string(REPLACE "," ";" hidden_roots "${CONSUMER_HIDE_CUDA}")

file(REMOVE_RECURSE "${CONSUMER_BINARY_DIR}" "${CONSUMER_BINARY_DIR}-init.cmake")

function(run_step description)
  message(STATUS "install consumer: ${description}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "install consumer: '${description}' failed (${result})")
  endif()
endfunction()

# Lists go through an initial cache file: on a command line their semicolons
# would split the arguments.
set(initial_cache "${CONSUMER_BINARY_DIR}-init.cmake")
set(cache_lines
  "set(CONSUMER_COMPONENTS \"${components}\" CACHE STRING \"\")\n")
set(configure_args
  -S "${CONSUMER_SOURCE_DIR}" -B "${CONSUMER_BINARY_DIR}"
  -G "${CONSUMER_GENERATOR}"
  -C "${initial_cache}"
  "-DCMAKE_PREFIX_PATH=${UNDERSTUDY_PREFIX}"
  "-DCMAKE_BUILD_TYPE=${UNDERSTUDY_BUILD_CONFIG}"
  "-DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER}"
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
if(CONSUMER_CXX_COMPILER_LAUNCHER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER_LAUNCHER=${CONSUMER_CXX_COMPILER_LAUNCHER}")
endif()
set(environment "")
if(hidden_roots)
  # CMAKE_IGNORE_PREFIX_PATH hides the roots from prefix searches; FindCUDAToolkit
  # also tries them directly (and nvcc on PATH), so their directories go into
  # CMAKE_IGNORE_PATH (which matches whole directory names only) as well.
  set(ignored_dirs "")
  foreach(root IN LISTS hidden_roots)
    list(APPEND ignored_dirs "${root}")
    foreach(sub bin include lib lib64 lib64/stubs lib/stubs nvvm/bin
                targets/x86_64-linux/include targets/x86_64-linux/lib
                targets/x86_64-linux/lib/stubs targets/sbsa-linux/include
                targets/sbsa-linux/lib targets/sbsa-linux/lib/stubs)
      list(APPEND ignored_dirs "${root}/${sub}")
    endforeach()
  endforeach()
  string(APPEND cache_lines
    "set(CMAKE_IGNORE_PREFIX_PATH \"${hidden_roots}\" CACHE STRING \"\")\n"
    "set(CMAKE_IGNORE_PATH \"${ignored_dirs}\" CACHE STRING \"\")\n"
    "set(CONSUMER_EXPECT_NO_CUDA ON CACHE BOOL \"\")\n")
  set(environment "${CMAKE_COMMAND}" -E env --unset=CUDACXX --unset=CUDA_PATH --unset=CUDA_HOME
                  --unset=CUDAToolkit_ROOT --unset=NCCL_ROOT)
endif()
file(WRITE "${initial_cache}" "${cache_lines}")
run_step("configure the consumer (components ${components})"
  ${environment} "${CMAKE_COMMAND}" ${configure_args})

file(STRINGS "${CONSUMER_BINARY_DIR}/CMakeCache.txt" found_dir REGEX "^understudy_DIR:")
string(REGEX REPLACE "^understudy_DIR:[A-Z]+=" "" found_dir "${found_dir}")
file(REAL_PATH "${found_dir}" found_dir)
file(REAL_PATH "${UNDERSTUDY_PREFIX}" prefix_real)
string(FIND "${found_dir}/" "${prefix_real}/" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR
    "install consumer: found understudy in ${found_dir}, not in the installed prefix ${prefix_real}")
endif()

run_step("build the consumer"
  "${CMAKE_COMMAND}" --build "${CONSUMER_BINARY_DIR}" --config "${UNDERSTUDY_BUILD_CONFIG}")

if(NOT CONSUMER_EXECUTABLE)
  set(CONSUMER_EXECUTABLE understudy_consumer)
endif()
set(consumer_exe "")
foreach(dir "${CONSUMER_BINARY_DIR}" "${CONSUMER_BINARY_DIR}/${UNDERSTUDY_BUILD_CONFIG}")
  if(NOT consumer_exe AND EXISTS "${dir}/${CONSUMER_EXECUTABLE}${CMAKE_EXECUTABLE_SUFFIX}")
    set(consumer_exe "${dir}/${CONSUMER_EXECUTABLE}${CMAKE_EXECUTABLE_SUFFIX}")
  endif()
endforeach()
if(NOT consumer_exe)
  message(FATAL_ERROR "install consumer: built program ${CONSUMER_EXECUTABLE} not found")
endif()
separate_arguments(consumer_args UNIX_COMMAND "${CONSUMER_ARGS}")
run_step("run ${consumer_exe} ${CONSUMER_ARGS}" "${consumer_exe}" ${consumer_args})
