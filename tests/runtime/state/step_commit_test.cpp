#include "understudy/state/step_commit.hpp"

#include <catch2/catch.hpp>

using understudy::step_commit;

TEST_CASE(
    "a step commits once it is applied and every participant has it durable, each counted "
    "once, and the committed step never goes back",
    "[state][step_commit]") {
  step_commit c(3);
  c.open(1);
  CHECK_FALSE(c.durable(1, 0));
  CHECK_FALSE(c.durable(1, 0)); // a duplicate acknowledgement counts once
  CHECK_FALSE(c.durable(1, 1));
  CHECK_FALSE(c.applied(1));
  CHECK_FALSE(c.durable(1, 7)); // no such participant
  CHECK(c.committed() == 0);
  CHECK(c.pending(1));
  // Step 2 may start while step 1 waits (it was applied last), step 3 may not.
  CHECK(c.may_start_after(1));
  c.open(2);
  CHECK_FALSE(c.may_start_after(2));
  CHECK(c.durable(1, 2));
  CHECK(c.committed() == 1);
  CHECK(c.may_start_after(2));
  // Step 3 completes before step 2: step 2 is superseded, and a late acknowledgement of it
  // changes nothing.
  c.open(3);
  CHECK_FALSE(c.applied(2));
  for (size_t i = 0; i < 3; ++i)
    c.durable(3, i);
  CHECK(c.applied(3));
  CHECK(c.committed() == 3);
  CHECK(c.idle());
  CHECK_FALSE(c.durable(2, 0));
  CHECK_FALSE(c.durable(2, 1));
  CHECK(c.committed() == 3);
  // A recovery abandons what waits.
  c.open(4);
  c.resumed(3);
  CHECK(c.idle());
  CHECK_FALSE(c.applied(4));
}

TEST_CASE(
    "a recovery resumes from the lowest of the participants' newest steps, and refuses a "
    "participant that lost its state or a state past the job's last step",
    "[state][step_commit]") {
  using opt = std::optional<uint64_t>;
  auto r = step_commit::resume({opt{12}, opt{11}, std::nullopt, opt{13}}, 11, 1, 100);
  CHECK(r.ok());
  CHECK(r.step == 11);
  CHECK(r.highest == 13);
  // A fresh job: a participant may be up to two checkpoints ahead of one that has nothing.
  r = step_commit::resume({opt{2}, opt{0}}, 0, 1, 100);
  CHECK(r.ok());
  CHECK(r.step == 0);
  r = step_commit::resume({opt{3}, opt{0}}, 0, 1, 100);
  REQUIRE(r.lost);
  CHECK(*r.lost == 1);
  r = step_commit::resume({opt{6}, opt{0}}, 0, 3, 100);
  CHECK(r.ok());
  // With a recorded commit, nothing at all is lost state.
  r = step_commit::resume({opt{1}, opt{0}}, 1, 1, 100);
  REQUIRE(r.lost);
  CHECK(*r.lost == 1);
  r = step_commit::resume({opt{120}, opt{121}}, 120, 1, 100);
  CHECK(r.past_last);
  CHECK(r.step == 120);
}
