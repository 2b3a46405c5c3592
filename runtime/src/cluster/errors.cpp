#include "understudy/cluster/errors.hpp"

#include "understudy/cluster/coordination.hpp"
#include "understudy/cluster/security.hpp"

namespace understudy {

void register_cluster_error_categories(caf::actor_system_config& cfg) {
  register_error_category<cluster_errc>(cfg);
  register_error_category<security_errc>(cfg);
  register_error_category<coordination_errc>(cfg);
}

coordinator::~coordinator() = default;

} // namespace understudy
