# Findxxhash
# ----------
# Finds the xxHash library (Debian: libxxhash-dev), with its x86 dispatch
# functions (xxh_x86dispatch.h) that pick SSE2/AVX2/AVX-512 at run time.
#
# Imported target:
#   xxhash::xxhash
#
# Result variables:
#   xxhash_FOUND, xxhash_INCLUDE_DIR, xxhash_LIBRARY

find_path(xxhash_INCLUDE_DIR NAMES xxhash.h DOC "Directory that contains xxhash.h")
find_library(xxhash_LIBRARY NAMES xxhash DOC "Path to libxxhash")
mark_as_advanced(xxhash_INCLUDE_DIR xxhash_LIBRARY)

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(xxhash REQUIRED_VARS xxhash_LIBRARY xxhash_INCLUDE_DIR)

if(xxhash_FOUND AND NOT TARGET xxhash::xxhash)
  add_library(xxhash::xxhash UNKNOWN IMPORTED)
  set_target_properties(xxhash::xxhash PROPERTIES
    IMPORTED_LOCATION "${xxhash_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${xxhash_INCLUDE_DIR}")
endif()
