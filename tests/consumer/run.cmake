# ctest driver: builds tests/consumer against svdq and runs it.
#   -DMODE=find_package -DSVDQ_BUILD=<svdq build dir> -DWORK=<scratch dir>
#   -DMODE=add_subdirectory -DSVDQ_SOURCE=<svdq source dir> -DWORK=<scratch dir>
#   -DMODE=pkg_config -DSVDQ_BUILD=<svdq build dir> -DWORK=<scratch dir>
#       installs, then compiles main.cpp by hand with `pkg-config --cflags --libs --static svdq`
#   -DMODE=shared -DSVDQ_SOURCE=<svdq source dir> -DWORK=<scratch dir>
#       builds svdq with BUILD_SHARED_LIBS=ON, checks the SONAME and that libsvdq.so exports only
#       svdq:: symbols (nm -D), then builds the consumer with find_package against it
file(REMOVE_RECURSE ${WORK})
set(consumer_src ${CMAKE_CURRENT_LIST_DIR})
# The two modes that compile svdq again (shared, add_subdirectory) do it at -O0: they check how
# svdq is built, found, linked and exported, not its speed, and -O0 compiles the library in ~120
# CPU-s instead of ~170 (2026-12-01, this 2-core CI machine).
set(no_opt "-DCMAKE_CXX_FLAGS_RELEASE=-O0 -DNDEBUG")
if(MODE STREQUAL "pkg_config")
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${SVDQ_BUILD} --prefix ${WORK}/prefix
                  RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "cmake --install failed: ${rc}")
  endif()
  file(GLOB_RECURSE pc ${WORK}/prefix/*/svdq.pc)
  if(NOT pc)
    message(FATAL_ERROR "no svdq.pc installed")
  endif()
  get_filename_component(pcdir ${pc} DIRECTORY)
  set(ENV{PKG_CONFIG_PATH} ${pcdir})
  execute_process(COMMAND pkg-config --cflags --libs --static svdq OUTPUT_VARIABLE flags
                  OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "pkg-config --libs --static svdq failed: ${rc}")
  endif()
  message(STATUS "pkg-config svdq: ${flags}")
  separate_arguments(flags UNIX_COMMAND "${flags}")
  execute_process(COMMAND c++ -std=c++20 -O1 ${consumer_src}/main.cpp ${flags} -o ${WORK}/consumer_pc
                  RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "linking by hand with pkg-config's flags failed: ${rc}")
  endif()
  execute_process(COMMAND ${WORK}/consumer_pc RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "the pkg-config consumer failed: ${rc}")
  endif()
  return()
endif()
if(MODE STREQUAL "shared")
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${SVDQ_SOURCE} -B ${WORK}/svdq -DCMAKE_BUILD_TYPE=Release
                          ${no_opt} -DBUILD_SHARED_LIBS=ON -DSVDQ_ENABLE_CUDA=OFF -DSVDQ_BUILD_TESTS=OFF
                          -DSVDQ_BUILD_BENCHMARKS=OFF -DSVDQ_BUILD_EXAMPLES=OFF -DSVDQ_BUILD_CLI=OFF
                  RESULT_VARIABLE rc)
  if(NOT rc)
    execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK}/svdq -j2 RESULT_VARIABLE rc)
  endif()
  if(NOT rc)
    execute_process(COMMAND ${CMAKE_COMMAND} --install ${WORK}/svdq --prefix ${WORK}/prefix
                    RESULT_VARIABLE rc)
  endif()
  if(rc)
    message(FATAL_ERROR "building/installing a shared svdq failed: ${rc}")
  endif()
  file(GLOB_RECURSE so ${WORK}/prefix/*/libsvdq.so)
  if(NOT so)
    message(FATAL_ERROR "no libsvdq.so installed")
  endif()
  execute_process(COMMAND readelf -d ${so} OUTPUT_VARIABLE dyn)
  if(NOT dyn MATCHES "SONAME[^
]*libsvdq\.so\.[0-9]+\.[0-9]+\]")
    message(FATAL_ERROR "libsvdq.so has no libsvdq.so.MAJOR.MINOR SONAME:
${dyn}")
  endif()
  execute_process(COMMAND nm -D --defined-only -C ${so} OUTPUT_VARIABLE syms)
  string(REPLACE "
" ";" lines "${syms}")
  set(count 0)
  foreach(line IN LISTS lines)
    if(line STREQUAL "")
      continue()
    endif()
    string(REGEX REPLACE "^[0-9a-fA-F]* *[A-Za-z] " "" name "${line}")
    math(EXPR count "${count} + 1")
    if(NOT name MATCHES "^svdq::")
      message(FATAL_ERROR "libsvdq.so exports a symbol outside svdq::: ${line}")
    endif()
  endforeach()
  if(count LESS 20)
    message(FATAL_ERROR "libsvdq.so exports only ${count} symbols:
${syms}")
  endif()
  message(STATUS "libsvdq.so exports ${count} symbols, all in svdq::")
  get_filename_component(libdir ${so} DIRECTORY)
  set(ENV{LD_LIBRARY_PATH} ${libdir})
  set(MODE find_package)
  set(extra -DCMAKE_PREFIX_PATH=${WORK}/prefix)
elseif(MODE STREQUAL "find_package")
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${SVDQ_BUILD} --prefix ${WORK}/prefix
                  RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "cmake --install failed: ${rc}")
  endif()
  set(extra -DCMAKE_PREFIX_PATH=${WORK}/prefix)
elseif(MODE STREQUAL "add_subdirectory")
  set(extra -DSVDQ_SOURCE_DIR=${SVDQ_SOURCE} -DSVDQ_ENABLE_CUDA=OFF ${no_opt})
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${consumer_src} -B ${WORK}/build
                        -DSVDQ_CONSUMER_MODE=${MODE} -DCMAKE_BUILD_TYPE=Release ${extra}
                RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring the consumer failed: ${rc}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK}/build -j2 RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building the consumer failed: ${rc}")
endif()
execute_process(COMMAND ${WORK}/build/consumer RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "the consumer failed: ${rc}")
endif()
