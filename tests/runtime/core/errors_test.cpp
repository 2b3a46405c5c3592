#include "understudy/core/errors.hpp"

#include <set>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
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
  for (int i = 0; i <= static_cast<int>(state_errc::not_replicated); ++i) {
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

TEST_CASE("an error names itself, so a process that does not know its category renders it by name",
          "[runtime][errors]") {
  // As a data error of the training component arrives from another process.
  caf::error err{
      uint8_t{3}, caf::atom("us_data"),
      caf::make_message(std::string{"empty_file"}, std::string{"digits.csv:4: no data rows"})};
  CHECK(describe(err) == "empty_file: digits.csv:4: no data rows");
  CHECK(error_context(err) == "digits.csv:4: no data rows");
}

TEST_CASE("an error not made by make_error renders with its category and code",
          "[runtime][errors]") {
  caf::error err{uint8_t{3}, caf::atom("us_other"),
                 caf::make_message(std::string{"Something went wrong"})};
  CHECK(describe(err) == "us_other code 3: Something went wrong");
  CHECK(error_context(err) == "Something went wrong");
}

TEST_CASE("make_error puts the value's name before the details in the context",
          "[runtime][errors]") {
  auto err = make_error(state_errc::not_found, "/job/a@3");
  REQUIRE(err.context().match_elements<std::string, std::string>());
  CHECK(err.context().get_as<std::string>(0) == "not_found");
  CHECK(err.context().get_as<std::string>(1) == "/job/a@3");
  CHECK(error_context(err) == "/job/a@3");
  auto bare = make_error(supervision_errc::timeout);
  REQUIRE(bare.context().match_elements<std::string>());
  CHECK(bare.context().get_as<std::string>(0) == "timeout");
  CHECK(error_context(bare).empty());
  CHECK(error_context(caf::make_error(caf::sec::runtime_error, "boom")) == "boom");
  CHECK(error_context(caf::error{}).empty());
}

TEST_CASE("the traits declare every core value with a name, a description and a next step",
          "[runtime][errors]") {
  for (const auto& v : error_traits<config_errc>::values) {
    CHECK(to_string(v.code) == v.name);
    CHECK(description(v.code) == v.description);
    CHECK_FALSE(v.description.empty());
    CHECK(next_step_for(v.code) == next_step::give_up);
  }
  CHECK(description(state_errc::disk_full) == "the disk is full");
  CHECK(to_string(static_cast<state_errc>(200)) == "unknown");
  CHECK(next_step_for(static_cast<state_errc>(200)) == next_step::give_up);
  CHECK(describe(make_error(static_cast<config_errc>(200), "x")) == "unknown: x");
}

TEST_CASE("register_error_categories makes the actor system render the core's errors by name",
          "[runtime][errors]") {
  caf::actor_system_config cfg;
  cfg.set("scheduler.policy", caf::atom("testing"));
  cfg.set("logger.console-verbosity", caf::atom("quiet"));
  cfg.set("logger.file-verbosity", caf::atom("quiet"));
  register_error_categories(cfg);
  caf::actor_system sys{cfg};
  CHECK(sys.render(make_error(state_errc::corrupt_record, "/a@1")) == "corrupt_record: /a@1");
  CHECK(sys.render(make_error(supervision_errc::timeout)) == "timeout");
  CHECK(sys.render(make_error(config_errc::syntax, "f.toml:1: x")) == "syntax: f.toml:1: x");
}

TEST_CASE("is() on an empty error matches only the none value", "[runtime][errors]") {
  caf::error empty;
  CHECK(is(empty, state_errc::none));
  CHECK_FALSE(is(empty, state_errc::not_found));
  CHECK_FALSE(is(empty, supervision_errc::timeout));
  CHECK(is(make_error(state_errc::not_found), state_errc::not_found));
}

TEST_CASE("with_context puts a prefix before the details and keeps what the error is",
          "[runtime][errors]") {
  auto err = with_context(make_error(state_errc::corrupt_record, "/job/a@3"), "replica to n2");
  CHECK(is(err, state_errc::corrupt_record));
  CHECK(describe(err) == "corrupt_record: replica to n2: /job/a@3");
  auto bare = with_context(make_error(state_errc::not_found), "replica to n2");
  CHECK(describe(bare) == "not_found: replica to n2");
  auto caf_err = with_context(caf::make_error(caf::sec::request_timeout), "replica to n2");
  CHECK(caf_err == caf::sec::request_timeout);
  CHECK_THAT(describe(caf_err), Catch::StartsWith("request_timeout: replica to n2"));
  CHECK_FALSE(with_context(caf::error{}, "replica to n2"));
}
