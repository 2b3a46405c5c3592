# Builds every ```cpp block of README.md against the installed package, so the
# README's code cannot rot. A block with a `main` function is a program: it must
# compile and link (it is not run). Any other block is a fragment: it must
# compile on its own as one translation unit, so it carries its includes and
# declares what it uses. Compiler messages name README.md and its lines.
#
# Run with cmake -P and these variables:
#   UNDERSTUDY_BUILD_CONFIG, UNDERSTUDY_PREFIX (installed by install_prefix.cmake),
#   README, SNIPPETS_DIR (scratch), SNIPPETS_GENERATOR, SNIPPETS_CXX_COMPILER,
#   SNIPPETS_CXX_COMPILER_LAUNCHER (may be empty).
cmake_minimum_required(VERSION 3.20)

foreach(var UNDERSTUDY_PREFIX README SNIPPETS_DIR SNIPPETS_GENERATOR SNIPPETS_CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "readme_snippets.cmake: ${var} is not set")
  endif()
endforeach()
if(NOT UNDERSTUDY_BUILD_CONFIG)
  set(UNDERSTUDY_BUILD_CONFIG Release)
endif()
if(NOT EXISTS "${UNDERSTUDY_PREFIX}")
  message(FATAL_ERROR "readme_snippets.cmake: ${UNDERSTUDY_PREFIX} is not installed")
endif()

file(REMOVE_RECURSE "${SNIPPETS_DIR}")
set(source_dir "${SNIPPETS_DIR}/src")
set(binary_dir "${SNIPPETS_DIR}/build")
file(MAKE_DIRECTORY "${source_dir}")

# One list element per line: characters that CMake's lists treat specially are
# swapped for placeholders first and restored when a block is written.
file(READ "${README}" text)
string(REPLACE "\\" "@BACKSLASH@" text "${text}")
string(REPLACE ";" "@SEMICOLON@" text "${text}")
string(REPLACE "[" "@LBRACKET@" text "${text}")
string(REPLACE "]" "@RBRACKET@" text "${text}")
string(REPLACE "\n" ";" lines "${text}")

set(line_no 0)
set(in_block FALSE)
set(block_start 0)
set(block "")
set(programs "")
set(fragments "")
set(components runtime actors)
foreach(line IN LISTS lines)
  math(EXPR line_no "${line_no} + 1")
  if(NOT in_block)
    if(line MATCHES "^```cpp[ \t]*$")
      set(in_block TRUE)
      math(EXPR block_start "${line_no} + 1")
      set(block "")
    endif()
    continue()
  endif()
  if(NOT line MATCHES "^```[ \t]*$")
    string(APPEND block "${line}\n")
    continue()
  endif()
  set(in_block FALSE)
  string(REPLACE "@BACKSLASH@" "\\" block "${block}")
  string(REPLACE "@SEMICOLON@" ";" block "${block}")
  string(REPLACE "@LBRACKET@" "[" block "${block}")
  string(REPLACE "@RBRACKET@" "]" block "${block}")
  set(name "readme_line_${block_start}")
  file(WRITE "${source_dir}/${name}.cpp" "#line ${block_start} \"${README}\"\n${block}")
  if(block MATCHES "(^|\n)[ \t]*int[ \t]+main[ \t]*\\(")
    list(APPEND programs "${name}")
  else()
    list(APPEND fragments "${name}")
  endif()
  if(block MATCHES "understudy/gpu/")
    list(APPEND components gpu)
  endif()
  if(block MATCHES "understudy/serving/")
    list(APPEND components serving)
  endif()
endforeach()
if(in_block)
  message(FATAL_ERROR "${README}:${block_start}: a ```cpp block is not closed")
endif()
if(NOT programs AND NOT fragments)
  message(FATAL_ERROR "${README} has no ```cpp block: nothing to check")
endif()
list(LENGTH programs program_count)
list(LENGTH fragments fragment_count)
message(STATUS "README snippets: ${program_count} program(s) (${programs}), "
               "${fragment_count} fragment(s) (${fragments})")

list(REMOVE_DUPLICATES components)
string(CONCAT project "cmake_minimum_required(VERSION 3.20)\n"
               "project(understudy_readme_snippets LANGUAGES CXX)\n"
               "find_package(understudy REQUIRED COMPONENTS ${components})\n")
list(TRANSFORM components PREPEND "understudy::" OUTPUT_VARIABLE targets)
string(REPLACE ";" " " targets "${targets}")
foreach(name IN LISTS programs)
  string(APPEND project "add_executable(${name} ${name}.cpp)\n"
                        "target_link_libraries(${name} PRIVATE ${targets})\n")
endforeach()
foreach(name IN LISTS fragments)
  string(APPEND project "add_library(${name} OBJECT ${name}.cpp)\n"
                        "target_link_libraries(${name} PRIVATE ${targets})\n")
endforeach()
file(WRITE "${source_dir}/CMakeLists.txt" "${project}")

set(configure_args
  -S "${source_dir}" -B "${binary_dir}" -G "${SNIPPETS_GENERATOR}"
  "-DCMAKE_PREFIX_PATH=${UNDERSTUDY_PREFIX}"
  "-DCMAKE_BUILD_TYPE=${UNDERSTUDY_BUILD_CONFIG}"
  "-DCMAKE_CXX_COMPILER=${SNIPPETS_CXX_COMPILER}"
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
if(SNIPPETS_CXX_COMPILER_LAUNCHER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER_LAUNCHER=${SNIPPETS_CXX_COMPILER_LAUNCHER}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" ${configure_args} RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "README snippets: configuring against ${UNDERSTUDY_PREFIX} failed (${result})")
endif()
execute_process(
  COMMAND "${CMAKE_COMMAND}" --build "${binary_dir}" --config "${UNDERSTUDY_BUILD_CONFIG}"
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "README snippets: a ```cpp block of ${README} does not build (see the "
                      "compiler's messages above, which name its lines)")
endif()
message(STATUS "README snippets: all ${program_count} program(s) and ${fragment_count} "
               "fragment(s) build")
