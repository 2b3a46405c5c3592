# Installs the build tree into a scratch prefix, then configures, builds and runs the consumer
# project in tests/install/consumer against that prefix only. Any failing step fails the test.
#
# Run with cmake -P and these variables:
#   UNDERSTUDY_BUILD_DIR, UNDERSTUDY_BUILD_CONFIG, UNDERSTUDY_PREFIX,
#   CONSUMER_SOURCE_DIR, CONSUMER_BINARY_DIR, CONSUMER_GENERATOR,
#   CONSUMER_CXX_COMPILER, CONSUMER_CXX_COMPILER_LAUNCHER (may be empty)
cmake_minimum_required(VERSION 3.20)

foreach(var UNDERSTUDY_BUILD_DIR UNDERSTUDY_PREFIX CONSUMER_SOURCE_DIR CONSUMER_BINARY_DIR
            CONSUMER_GENERATOR CONSUMER_CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: ${var} is not set")
  endif()
endforeach()
if(NOT UNDERSTUDY_BUILD_CONFIG)
  set(UNDERSTUDY_BUILD_CONFIG Release)
endif()

file(REMOVE_RECURSE "${UNDERSTUDY_PREFIX}" "${CONSUMER_BINARY_DIR}")

function(run_step description)
  message(STATUS "install consumer: ${description}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "install consumer: '${description}' failed (${result})")
  endif()
endfunction()

run_step("install ${UNDERSTUDY_BUILD_DIR} into ${UNDERSTUDY_PREFIX}"
  "${CMAKE_COMMAND}" --install "${UNDERSTUDY_BUILD_DIR}"
    --prefix "${UNDERSTUDY_PREFIX}" --config "${UNDERSTUDY_BUILD_CONFIG}")

set(configure_args
  -S "${CONSUMER_SOURCE_DIR}" -B "${CONSUMER_BINARY_DIR}"
  -G "${CONSUMER_GENERATOR}"
  "-DCMAKE_PREFIX_PATH=${UNDERSTUDY_PREFIX}"
  "-DCMAKE_BUILD_TYPE=${UNDERSTUDY_BUILD_CONFIG}"
  "-DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER}"
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
if(CONSUMER_CXX_COMPILER_LAUNCHER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER_LAUNCHER=${CONSUMER_CXX_COMPILER_LAUNCHER}")
endif()
run_step("configure the consumer" "${CMAKE_COMMAND}" ${configure_args})

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

set(consumer_exe "")
foreach(dir "${CONSUMER_BINARY_DIR}" "${CONSUMER_BINARY_DIR}/${UNDERSTUDY_BUILD_CONFIG}")
  if(NOT consumer_exe AND EXISTS "${dir}/understudy_consumer${CMAKE_EXECUTABLE_SUFFIX}")
    set(consumer_exe "${dir}/understudy_consumer${CMAKE_EXECUTABLE_SUFFIX}")
  endif()
endforeach()
if(NOT consumer_exe)
  message(FATAL_ERROR "install consumer: built program understudy_consumer not found")
endif()
run_step("run ${consumer_exe}" "${consumer_exe}")
