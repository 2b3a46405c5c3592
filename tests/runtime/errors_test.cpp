#include "understudy/runtime/errors.hpp"

#include <set>

#include <caf/exit_reason.hpp>
#include <caf/make_message.hpp>
#include <caf/sec.hpp>
#include <catch2/catch.hpp>

using namespace understudy;

TEST_CASE("every supervision error has a distinct name and a next step", "[runtime][errors]") {
  std::set<std::string> names;
  for (int i = 0; i <= static_cast<int>(supervision_errc::timeout); ++i) {
    auto code = static_cast<supervision_errc>(i);
    auto name = to_string(code);
    CHECK(name != "unknown");
    CHECK(names.insert(name).second);
    CHECK(to_string(next_step_for(code)) != "unknown");
  }
  CHECK(next_step_for(supervision_errc::duplicate_child_id) == next_step::give_up);
  CHECK(next_step_for(supervision_errc::intensity_exceeded) == next_step::back_off);
  CHECK(next_step_for(supervision_errc::supervisor_stopping) == next_step::reconnect);
}

TEST_CASE("errors carry their context and render readably", "[runtime][errors]") {
  auto err = make_error(supervision_errc::unknown_child, "worker-7");
  CHECK(is(err, supervision_errc::unknown_child));
  CHECK_FALSE(is(err, supervision_errc::child_running));
  CHECK(describe(err) == "unknown_child: worker-7");
  CHECK(describe(make_error(supervision_errc::timeout)) == "timeout");
  CHECK(describe(caf::error{}) == "normal");
  CHECK(describe(caf::make_error(caf::exit_reason::kill)) == "kill");
  CHECK(describe(caf::make_error(caf::sec::runtime_error)) == "runtime_error");
}

TEST_CASE("every state error has a distinct name and a next step, distinct from supervision's",
          "[state][errors]") {
  std::set<std::string> names;
  for (int i = 0; i <= static_cast<int>(state_errc::writer_stopped); ++i) {
    auto code = static_cast<state_errc>(i);
    auto name = to_string(code);
    CHECK(name != "unknown");
    CHECK(names.insert(name).second);
    CHECK(to_string(next_step_for(code)) != "unknown");
  }
  CHECK(next_step_for(state_errc::corrupt_record) == next_step::give_up);
  CHECK(next_step_for(state_errc::disk_full) == next_step::back_off);
  auto err = make_error(state_errc::corrupt_record, "/job/a@3: checksum mismatch");
  CHECK(is(err, state_errc::corrupt_record));
  CHECK_FALSE(is(err, supervision_errc::start_failed));
  CHECK(describe(err) == "corrupt_record: /job/a@3: checksum mismatch");
}

TEST_CASE("errors of other components render with their category, code and context",
          "[runtime][errors]") {
  caf::error err{uint8_t{3}, caf::atom("us_data"),
                 caf::make_message(std::string{"digits.csv:4: expected 65 columns"})};
  CHECK(describe(err) == "us_data error 3: digits.csv:4: expected 65 columns");
}
