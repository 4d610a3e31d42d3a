// API hygiene: a Result built from a success Status is never ok() (Status::Ok() does not even
// compile into one); the umbrella header does not pull in the test helpers.
#include <gtest/gtest.h>

#include <string>
#include <type_traits>

#include "svdq/svdq.hpp"

#ifdef SVDQ_SYNTH_HPP_INCLUDED
#error "svdq/svdq.hpp must not include the test helpers (svdq/synth.hpp)"
#endif

namespace {

using svdq::OkStatus;
using svdq::Result;
using svdq::Status;
using svdq::StatusCode;

// `Result<int> r = Status::Ok();` and `Result<int> r(Status::Ok());` must not compile.
static_assert(!std::is_convertible_v<OkStatus, Result<int>>);
static_assert(!std::is_constructible_v<Result<int>, OkStatus>);
static_assert(!std::is_constructible_v<Result<std::string>, decltype(Status::Ok())>);
// Status::Ok() still is a Status everywhere else.
static_assert(std::is_convertible_v<OkStatus, Status>);
// Values and errors convert as before.
static_assert(std::is_convertible_v<int, Result<int>>);
static_assert(std::is_convertible_v<Status, Result<int>>);

TEST(Api, ResultFromSuccessStatusIsNotOk) {
  const Status success;  // a success Status that reached a Result by another route
  ASSERT_TRUE(success.ok());
  const Result<int> r = success;
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kErrorInternal);
  EXPECT_NE(r.status().message().find("without a value"), std::string::npos);
}

TEST(Api, StatusOkIsSuccess) {
  const Status s = Status::Ok();
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.to_string(), "success");
  const Result<int> v = 3;
  EXPECT_TRUE(v.ok());
  EXPECT_EQ(*v, 3);
  const Result<int> e = Status(StatusCode::kErrorShape, "x");
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kErrorShape);
}

}  // namespace
