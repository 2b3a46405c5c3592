#include <iostream>

#include <understudy/runtime/version.hpp>

int main() {
  std::cout << "understudy " << understudy::version() << '\n';
  return 0;
}
