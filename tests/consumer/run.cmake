# ctest driver: builds tests/consumer against svdq and runs it.
#   -DMODE=find_package -DSVDQ_BUILD=<svdq build dir> -DWORK=<scratch dir>
#   -DMODE=add_subdirectory -DSVDQ_SOURCE=<svdq source dir> -DWORK=<scratch dir>
file(REMOVE_RECURSE ${WORK})
set(consumer_src ${CMAKE_CURRENT_LIST_DIR})
if(MODE STREQUAL "find_package")
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${SVDQ_BUILD} --prefix ${WORK}/prefix
                  RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "cmake --install failed: ${rc}")
  endif()
  set(extra -DCMAKE_PREFIX_PATH=${WORK}/prefix)
else()
  set(extra -DSVDQ_SOURCE_DIR=${SVDQ_SOURCE} -DSVDQ_ENABLE_CUDA=OFF)
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
