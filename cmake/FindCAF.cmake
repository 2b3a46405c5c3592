# FindCAF
# -------
# Finds the C++ Actor Framework (CAF) 0.17, which Debian ships without a CMake package.
#
# Components: core, io, openssl. Without COMPONENTS, all three are looked for and core is
# required. io implies core; openssl implies io.
#
# Imported targets:
#   CAF::core     libcaf_core
#   CAF::io       libcaf_io, depends on CAF::core
#   CAF::openssl  libcaf_openssl, depends on CAF::io and OpenSSL::SSL
#
# Result variables:
#   CAF_FOUND, CAF_VERSION (e.g. 0.17.6), CAF_INCLUDE_DIR, CAF_<component>_FOUND,
#   CAF_<component>_LIBRARY
#
# Hints: CAF_ROOT (prefix of a CAF installation).

find_path(CAF_INCLUDE_DIR NAMES caf/config.hpp DOC "Directory that contains caf/config.hpp")
mark_as_advanced(CAF_INCLUDE_DIR)

if(CAF_INCLUDE_DIR AND EXISTS "${CAF_INCLUDE_DIR}/caf/config.hpp")
  file(STRINGS "${CAF_INCLUDE_DIR}/caf/config.hpp" _caf_version_line
       REGEX "^#define CAF_VERSION [0-9]+")
  if(_caf_version_line MATCHES "^#define CAF_VERSION ([0-9]+)")
    set(_caf_version_int "${CMAKE_MATCH_1}")
    math(EXPR _caf_major "${_caf_version_int} / 10000")
    math(EXPR _caf_minor "(${_caf_version_int} / 100) % 100")
    math(EXPR _caf_patch "${_caf_version_int} % 100")
    set(CAF_VERSION "${_caf_major}.${_caf_minor}.${_caf_patch}")
  endif()
  unset(_caf_version_line)
  unset(_caf_version_int)
  unset(_caf_major)
  unset(_caf_minor)
  unset(_caf_patch)
endif()

if(CAF_FIND_COMPONENTS)
  set(_caf_components ${CAF_FIND_COMPONENTS})
else()
  set(_caf_components core io openssl)
endif()
if("openssl" IN_LIST _caf_components AND NOT "io" IN_LIST _caf_components)
  list(APPEND _caf_components io)
endif()
if("io" IN_LIST _caf_components AND NOT "core" IN_LIST _caf_components)
  list(APPEND _caf_components core)
endif()

foreach(_caf_comp IN LISTS _caf_components)
  if(NOT _caf_comp MATCHES "^(core|io|openssl)$")
    message(FATAL_ERROR "FindCAF: unknown component '${_caf_comp}' (known: core io openssl)")
  endif()
  find_library(CAF_${_caf_comp}_LIBRARY NAMES caf_${_caf_comp} DOC "Path to libcaf_${_caf_comp}")
  mark_as_advanced(CAF_${_caf_comp}_LIBRARY)
  if(CAF_INCLUDE_DIR AND CAF_${_caf_comp}_LIBRARY)
    set(CAF_${_caf_comp}_FOUND TRUE)
  else()
    set(CAF_${_caf_comp}_FOUND FALSE)
  endif()
endforeach()

if(CAF_openssl_FOUND)
  if(NOT TARGET OpenSSL::SSL)
    find_package(OpenSSL QUIET)
  endif()
  if(NOT TARGET OpenSSL::SSL)
    set(CAF_openssl_FOUND FALSE)
  endif()
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(CAF
  REQUIRED_VARS CAF_core_LIBRARY CAF_INCLUDE_DIR
  VERSION_VAR CAF_VERSION
  HANDLE_COMPONENTS)

if(CAF_FOUND)
  if(CAF_core_FOUND AND NOT TARGET CAF::core)
    add_library(CAF::core UNKNOWN IMPORTED)
    set_target_properties(CAF::core PROPERTIES
      IMPORTED_LOCATION "${CAF_core_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${CAF_INCLUDE_DIR}")
  endif()
  if(CAF_io_FOUND AND NOT TARGET CAF::io)
    add_library(CAF::io UNKNOWN IMPORTED)
    set_target_properties(CAF::io PROPERTIES
      IMPORTED_LOCATION "${CAF_io_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${CAF_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES CAF::core)
  endif()
  if(CAF_openssl_FOUND AND NOT TARGET CAF::openssl)
    add_library(CAF::openssl UNKNOWN IMPORTED)
    set_target_properties(CAF::openssl PROPERTIES
      IMPORTED_LOCATION "${CAF_openssl_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${CAF_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES "CAF::io;OpenSSL::SSL")
  endif()
endif()

unset(_caf_components)
