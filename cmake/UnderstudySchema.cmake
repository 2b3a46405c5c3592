# understudy_add_schema(TARGET <target> SCHEMAS <file.capnp>...)
#
# Compiles Cap'n Proto schemas for the persisted state of a program's own
# actors into an object library <target>_schema, built in the calling directory
# (where the generating rule is), and links it into <target>: `#include
# "NAME.capnp.h"` then works in its sources. Paths are relative to the calling
# directory; the code is generated into ${CMAKE_CURRENT_BINARY_DIR}/understudy_schema.
# Installed with the package (find_package(understudy) provides it) and used
# by examples/custom_node inside understudy's own build.
function(understudy_add_schema)
  cmake_parse_arguments(arg "" "TARGET" "SCHEMAS" ${ARGN})
  if(NOT arg_TARGET OR NOT arg_SCHEMAS)
    message(FATAL_ERROR "understudy_add_schema: needs TARGET <target> and SCHEMAS <file.capnp>...")
  endif()
  if(NOT COMMAND capnp_generate_cpp)
    find_package(CapnProto REQUIRED)
  endif()
  set(CAPNPC_SRC_PREFIX "${CMAKE_CURRENT_SOURCE_DIR}")
  set(CAPNPC_OUTPUT_DIR "${CMAKE_CURRENT_BINARY_DIR}/understudy_schema")
  file(MAKE_DIRECTORY "${CAPNPC_OUTPUT_DIR}")
  set(schemas "")
  foreach(schema IN LISTS arg_SCHEMAS)
    get_filename_component(schema "${schema}" ABSOLUTE)
    list(APPEND schemas "${schema}")
  endforeach()
  capnp_generate_cpp(sources headers ${schemas})
  add_library(${arg_TARGET}_schema OBJECT ${sources} ${headers})
  target_include_directories(${arg_TARGET}_schema PUBLIC "${CAPNPC_OUTPUT_DIR}")
  target_link_libraries(${arg_TARGET}_schema PUBLIC CapnProto::capnp)
  target_link_libraries(${arg_TARGET} PRIVATE ${arg_TARGET}_schema)
endfunction()
