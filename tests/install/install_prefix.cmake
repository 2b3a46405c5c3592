# Installs the build tree into a fresh scratch prefix, for the tests that build
# against the installed package (the install consumers, the README snippets).
#
# Run with cmake -P and UNDERSTUDY_BUILD_DIR, UNDERSTUDY_BUILD_CONFIG, UNDERSTUDY_PREFIX.
cmake_minimum_required(VERSION 3.20)

foreach(var UNDERSTUDY_BUILD_DIR UNDERSTUDY_PREFIX)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "install_prefix.cmake: ${var} is not set")
  endif()
endforeach()
if(NOT UNDERSTUDY_BUILD_CONFIG)
  set(UNDERSTUDY_BUILD_CONFIG Release)
endif()

file(REMOVE_RECURSE "${UNDERSTUDY_PREFIX}")
execute_process(
  COMMAND "${CMAKE_COMMAND}" --install "${UNDERSTUDY_BUILD_DIR}"
    --prefix "${UNDERSTUDY_PREFIX}" --config "${UNDERSTUDY_BUILD_CONFIG}"
  OUTPUT_QUIET
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "installing ${UNDERSTUDY_BUILD_DIR} into ${UNDERSTUDY_PREFIX} failed (${result})")
endif()
message(STATUS "installed ${UNDERSTUDY_BUILD_DIR} into ${UNDERSTUDY_PREFIX}")
