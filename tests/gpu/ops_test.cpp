#include "understudy/gpu/ops.hpp"

#include <catch2/catch.hpp>

namespace ug = understudy::gpu;

TEST_CASE("op_batch builders record one op each and number the downloads", "[gpu_ops]") {
  ug::op_batch b;
  b.allocate(1, 12);
  b.upload(ug::whole(1, 3), std::vector<float>{1, 2, 3});
  REQUIRE(b.download(ug::whole(1, 12)) == 0);
  b.gemm(true, false, 2, 3, 4, 1.0f, ug::slice{1, 0, 8}, ug::slice{1, 0, 12}, 0.5f,
         ug::slice{2, 0, 6});
  REQUIRE(b.download(ug::whole(1, 12).sub(4, 2)) == 1);
  b.adam_step(ug::whole(1, 4), ug::whole(2, 4), ug::whole(3, 4), ug::whole(4, 4),
              ug::adam_params{});
  REQUIRE(b.ops.size() == 6);
  REQUIRE(b.ops[1].code == ug::op_code::upload);
  REQUIRE(b.ops[1].data == std::vector<float>{1, 2, 3});
  const auto& g = b.ops[3];
  REQUIRE(g.code == ug::op_code::gemm);
  REQUIRE(g.sizes == std::vector<uint64_t>{2, 3, 4, 1, 0});
  REQUIRE(g.scalars == std::vector<float>{1.0f, 0.5f});
  REQUIRE(b.ops[4].operands.front() == ug::slice{1, 4, 2});
  REQUIRE(b.ops[5].sizes == std::vector<uint64_t>{1});
  REQUIRE(ug::to_string(ug::op_code::softmax_xent) == "softmax_xent");
}
