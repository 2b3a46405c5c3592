#include "understudy/runtime/security.hpp"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <utility>

#include <caf/actor_cast.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/make_message.hpp>
#include <caf/node_id.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/openssl/publish.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/sec.hpp>

namespace understudy {

std::string to_string(security_errc x) {
  switch (x) {
    case security_errc::none:
      return "none";
    case security_errc::no_security:
      return "no_security";
    case security_errc::missing_setting:
      return "missing_setting";
    case security_errc::file_exists:
      return "file_exists";
    case security_errc::io_error:
      return "io_error";
    case security_errc::crypto_error:
      return "crypto_error";
    case security_errc::invalid_certificate:
      return "invalid_certificate";
    case security_errc::unknown_node:
      return "unknown_node";
    case security_errc::insecure_address:
      return "insecure_address";
  }
  return "unknown";
}

next_step next_step_for(security_errc x) {
  return x == security_errc::io_error ? next_step::back_off : next_step::give_up;
}

caf::error make_error(security_errc x, std::string context) {
  return caf::error{static_cast<uint8_t>(x), security_category,
                    caf::make_message(std::move(context))};
}

bool is(const caf::error& err, security_errc x) {
  return err.category() == security_category && err.code() == static_cast<uint8_t>(x);
}

namespace {

namespace fs = std::filesystem;

// -- OpenSSL handles ------------------------------------------------------------------------

template <class T, void (*Free)(T*)>
struct openssl_deleter {
  void operator()(T* ptr) const noexcept { Free(ptr); }
};

using bio_ptr = std::unique_ptr<BIO, openssl_deleter<BIO, BIO_free_all>>;
using bignum_ptr = std::unique_ptr<BIGNUM, openssl_deleter<BIGNUM, BN_free>>;
using pkey_ptr = std::unique_ptr<EVP_PKEY, openssl_deleter<EVP_PKEY, EVP_PKEY_free>>;
using x509_ptr = std::unique_ptr<X509, openssl_deleter<X509, X509_free>>;
using store_ptr = std::unique_ptr<X509_STORE, openssl_deleter<X509_STORE, X509_STORE_free>>;
using store_ctx_ptr =
    std::unique_ptr<X509_STORE_CTX, openssl_deleter<X509_STORE_CTX, X509_STORE_CTX_free>>;

/// Drains this thread's OpenSSL error queue into one line.
std::string openssl_errors() {
  std::string result;
  while (auto code = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    if (!result.empty())
      result += "; ";
    result += buf;
  }
  return result.empty() ? "no OpenSSL error recorded" : result;
}

caf::error crypto_error(const std::string& what) {
  return make_error(security_errc::crypto_error, what + ": " + openssl_errors());
}

std::string os_error(int code) {
  return std::strerror(code);
}

// -- addresses --------------------------------------------------------------------------------

/// "[::1]" -> "::1"; anything else as is.
std::string strip_brackets(const std::string& host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    return host.substr(1, host.size() - 2);
  return host;
}

bool is_loopback(const std::string& host) {
  auto h = strip_brackets(host);
  if (h == "localhost")
    return true;
  in_addr v4{};
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1)
    return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (inet_pton(AF_INET6, h.c_str(), &v6) == 1)
    return IN6_IS_ADDR_LOOPBACK(&v6) != 0;
  return false;
}

/// Whether binding `host` would bind every interface.
bool is_wildcard(const std::string& host) {
  auto h = strip_brackets(host);
  if (h.empty() || h == "*")
    return true;
  in_addr v4{};
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1)
    return v4.s_addr == htonl(INADDR_ANY);
  in6_addr v6{};
  if (inet_pton(AF_INET6, h.c_str(), &v6) == 1)
    return IN6_IS_ADDR_UNSPECIFIED(&v6) != 0;
  return false;
}

/// Whether `host` is an IP address literal (for subjectAltName IP vs DNS).
bool is_ip_address(const std::string& host) {
  auto h = strip_brackets(host);
  in_addr v4{};
  in6_addr v6{};
  return inet_pton(AF_INET, h.c_str(), &v4) == 1 || inet_pton(AF_INET6, h.c_str(), &v6) == 1;
}

// -- files ------------------------------------------------------------------------------------

caf::expected<std::string> read_file(const std::string& path, const char* what) {
  std::ifstream in{path, std::ios::binary};
  if (!in)
    return make_error(security_errc::io_error,
                      std::string{"cannot read "} + what + " " + path + ": " + os_error(errno));
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

/// Creates `dir` and its missing parents with mode 0700; existing ones stay as they are.
caf::error make_directories(const fs::path& dir) {
  if (dir.empty())
    return {};
  std::error_code ec;
  if (fs::is_directory(dir, ec))
    return {};
  if (dir.has_parent_path() && dir.parent_path() != dir)
    if (auto err = make_directories(dir.parent_path()))
      return err;
  if (::mkdir(dir.c_str(), 0700) != 0) {
    if (errno == EEXIST && fs::is_directory(dir, ec))
      return {};
    return make_error(security_errc::io_error,
                      "cannot create directory " + dir.string() + ": " + os_error(errno));
  }
  // The umask may have taken bits away; make it exactly 0700.
  ::chmod(dir.c_str(), 0700);
  return {};
}

/// Writes `data` to `path` with `mode` through a temporary file in the same
/// directory that is synced and renamed over `path`.
caf::error write_file(const std::string& path, const std::string& data, mode_t mode) {
  std::string tmp = path + ".tmp-XXXXXX";
  int fd = ::mkstemp(tmp.data());
  if (fd < 0)
    return make_error(security_errc::io_error,
                      "cannot create a temporary file next to " + path + ": " + os_error(errno));
  auto fail = [&](const std::string& what) {
    auto code = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return make_error(security_errc::io_error,
                      "cannot " + what + " " + path + ": " + os_error(code));
  };
  if (::fchmod(fd, mode) != 0)
    return fail("set the mode of");
  size_t done = 0;
  while (done < data.size()) {
    auto n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return fail("write");
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0)
    return fail("sync");
  if (::close(fd) != 0) {
    auto code = errno;
    ::unlink(tmp.c_str());
    return make_error(security_errc::io_error, "cannot write " + path + ": " + os_error(code));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    auto code = errno;
    ::unlink(tmp.c_str());
    return make_error(security_errc::io_error,
                      "cannot rename a temporary file to " + path + ": " + os_error(code));
  }
  return {};
}

// -- generating -------------------------------------------------------------------------------

caf::expected<pkey_ptr> generate_key() {
  pkey_ptr key{EVP_EC_gen("P-256")};
  if (!key)
    return crypto_error("cannot generate an EC P-256 key");
  return key;
}

bool add_name_entry(X509_NAME* name, const char* field, const std::string& value) {
  return X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8,
                                    reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1,
                                    0) == 1;
}

bool add_extension(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str());
  if (ext == nullptr)
    return false;
  auto ok = X509_add_ext(cert, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

/// What goes into one certificate.
struct certificate_request {
  std::string common_name;
  std::string organization;
  const EVP_PKEY* subject_key = nullptr;
  /// Null for a self-signed certificate.
  X509* issuer = nullptr;
  EVP_PKEY* issuer_key = nullptr;
  int days = 0;
  bool is_ca = false;
  /// For subjectAltName, e.g. "IP:127.0.0.1" ("" for none).
  std::string alt_name;
};

caf::expected<x509_ptr> make_certificate(const certificate_request& req) {
  x509_ptr cert{X509_new()};
  if (!cert)
    return crypto_error("cannot allocate a certificate");
  auto what = "cannot build the certificate for '" + req.common_name + "'";
  if (X509_set_version(cert.get(), X509_VERSION_3) != 1)
    return crypto_error(what);
  // A random positive 127-bit serial number.
  bignum_ptr serial{BN_new()};
  if (!serial || BN_rand(serial.get(), 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
      BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) == nullptr)
    return crypto_error(what);
  // Valid from an hour ago, for clocks of other hosts that are a little behind.
  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600) == nullptr ||
      X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(req.days) * 86400) ==
          nullptr)
    return crypto_error(what);
  if (X509_set_pubkey(cert.get(), const_cast<EVP_PKEY*>(req.subject_key)) != 1)
    return crypto_error(what);
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (!add_name_entry(name, "O", req.organization) || !add_name_entry(name, "CN", req.common_name))
    return crypto_error(what);
  X509* issuer = req.issuer != nullptr ? req.issuer : cert.get();
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(issuer)) != 1)
    return crypto_error(what);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert.get(), nullptr, nullptr, 0);
  bool ok = true;
  if (req.is_ca) {
    ok = add_extension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
         add_extension(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    ok = add_extension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE") &&
         add_extension(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature") &&
         add_extension(cert.get(), &ctx, NID_ext_key_usage, "serverAuth,clientAuth");
    if (ok && !req.alt_name.empty())
      ok = add_extension(cert.get(), &ctx, NID_subject_alt_name, req.alt_name);
  }
  // The subject key id first: a self-signed certificate's authority key id refers to it.
  ok = ok && add_extension(cert.get(), &ctx, NID_subject_key_identifier, "hash") &&
       add_extension(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always");
  if (!ok)
    return crypto_error(what + ": cannot add its extensions");
  if (X509_sign(cert.get(), req.issuer_key, EVP_sha256()) <= 0)
    return crypto_error("cannot sign the certificate for '" + req.common_name + "'");
  return cert;
}

std::string memory_bio_text(BIO* bio) {
  char* data = nullptr;
  auto n = BIO_get_mem_data(bio, &data);
  return n > 0 ? std::string(data, static_cast<size_t>(n)) : std::string{};
}

caf::expected<std::string> key_pem(EVP_PKEY* key) {
  bio_ptr bio{BIO_new(BIO_s_mem())};
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return crypto_error("cannot encode a private key");
  return memory_bio_text(bio.get());
}

caf::expected<std::string> certificate_pem(X509* cert) {
  bio_ptr bio{BIO_new(BIO_s_mem())};
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1)
    return crypto_error("cannot encode a certificate");
  return memory_bio_text(bio.get());
}

// -- reading ----------------------------------------------------------------------------------

caf::expected<x509_ptr> load_certificate(const std::string& path, const char* what) {
  auto text = read_file(path, what);
  if (!text)
    return std::move(text.error());
  bio_ptr bio{BIO_new_mem_buf(text->data(), static_cast<int>(text->size()))};
  x509_ptr cert{bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr};
  if (!cert)
    return make_error(
        security_errc::invalid_certificate,
        std::string{what} + " " + path + " is not a PEM certificate: " + openssl_errors());
  return cert;
}

/// Never prompts: an encrypted key cannot be read.
int no_passphrase(char*, int, int, void*) {
  return -1;
}

caf::expected<pkey_ptr> load_key(const std::string& path, const char* what) {
  auto text = read_file(path, what);
  if (!text)
    return std::move(text.error());
  bio_ptr bio{BIO_new_mem_buf(text->data(), static_cast<int>(text->size()))};
  pkey_ptr key{bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr) : nullptr};
  if (!key)
    return make_error(security_errc::invalid_certificate,
                      std::string{what} + " " + path +
                          " is not an unencrypted PEM private key: " + openssl_errors());
  return key;
}

std::string common_name(const X509_NAME* name) {
  int i = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (i < 0)
    return {};
  auto* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
  unsigned char* utf8 = nullptr;
  int n = ASN1_STRING_to_UTF8(&utf8, data);
  if (n < 0)
    return {};
  std::string result(reinterpret_cast<char*>(utf8), static_cast<size_t>(n));
  OPENSSL_free(utf8);
  return result;
}

std::chrono::system_clock::time_point to_time_point(const ASN1_TIME* t) {
  std::tm tm{};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1)
    return {};
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

certificate_info describe_certificate(X509* cert) {
  certificate_info info;
  info.subject_cn = common_name(X509_get_subject_name(cert));
  info.issuer_cn = common_name(X509_get_issuer_name(cert));
  info.not_before = to_time_point(X509_get0_notBefore(cert));
  info.not_after = to_time_point(X509_get0_notAfter(cert));
  if (auto* bc = static_cast<BASIC_CONSTRAINTS*>(
          X509_get_ext_d2i(cert, NID_basic_constraints, nullptr, nullptr))) {
    info.is_ca = bc->ca != 0;
    BASIC_CONSTRAINTS_free(bc);
  }
  if (auto* names = static_cast<GENERAL_NAMES*>(
          X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr))) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
      const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names, i);
      if (gn->type == GEN_DNS) {
        auto* s = gn->d.dNSName;
        info.dns_names.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                    static_cast<size_t>(ASN1_STRING_length(s)));
      } else if (gn->type == GEN_IPADD) {
        auto* s = gn->d.iPAddress;
        char buf[INET6_ADDRSTRLEN] = {};
        int len = ASN1_STRING_length(s);
        int family = len == 4 ? AF_INET : len == 16 ? AF_INET6 : 0;
        if (family != 0 && inet_ntop(family, ASN1_STRING_get0_data(s), buf, sizeof(buf)))
          info.ip_addresses.emplace_back(buf);
      }
    }
    GENERAL_NAMES_free(names);
  }
  return info;
}

/// Checks that `cert` chains to `ca` alone and is fit for `purpose`, now.
caf::error verify_chain(X509* cert, X509* ca, int purpose, const std::string& cert_path,
                        const std::string& ca_path) {
  store_ptr store{X509_STORE_new()};
  store_ctx_ptr ctx{X509_STORE_CTX_new()};
  if (!store || !ctx || X509_STORE_add_cert(store.get(), ca) != 1 ||
      X509_STORE_CTX_init(ctx.get(), store.get(), cert, nullptr) != 1 ||
      X509_STORE_CTX_set_purpose(ctx.get(), purpose) != 1)
    return crypto_error("cannot set up verifying " + cert_path);
  if (X509_verify_cert(ctx.get()) != 1) {
    auto code = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return make_error(security_errc::invalid_certificate,
                      "certificate " + cert_path + " is not valid with the cluster's CA " +
                          ca_path + ": " + X509_verify_cert_error_string(code));
  }
  return {};
}

} // namespace

// -- creating ---------------------------------------------------------------------------------

caf::expected<std::vector<std::string>> create_cluster_certificates(const node_config& config,
                                                                    bool force) {
  if (!config.cluster.security)
    return make_error(security_errc::no_security,
                      config.origin +
                          ": has no [cluster.security] section, so there is nowhere to put "
                          "certificates; add one, e.g. dir = \"certs\"");
  const auto& sec = *config.cluster.security;
  if (sec.ca_key.empty())
    return make_error(security_errc::missing_setting,
                      config.origin +
                          ": [cluster.security] sets neither 'ca_key' nor 'dir', so there is "
                          "nowhere to put the CA's key");
  /// One file to write.
  struct output {
    std::string path;
    std::string what;
    mode_t mode;
    std::string text;
  };
  std::vector<output> outputs;
  outputs.push_back({sec.ca_key, "the CA's key", 0600, {}});
  outputs.push_back({sec.ca, "the CA certificate", 0644, {}});
  for (const auto& n : config.nodes) {
    outputs.push_back({n.key, "the key of node '" + n.name + "'", 0600, {}});
    outputs.push_back({n.cert, "the certificate of node '" + n.name + "'", 0644, {}});
  }
  // Two roles must not share a file.
  std::map<std::string, std::string> seen;
  for (const auto& out : outputs) {
    std::error_code ec;
    auto abs = fs::absolute(out.path, ec).lexically_normal().string();
    if (auto [it, fresh] = seen.emplace(abs, out.what); !fresh)
      return make_error(security_errc::missing_setting,
                        config.origin + ": " + out.what + " and " + it->second +
                            " would both be written to " + out.path);
  }
  if (!force) {
    for (const auto& out : outputs) {
      struct stat st {};
      if (::lstat(out.path.c_str(), &st) == 0)
        return make_error(security_errc::file_exists,
                          out.path + " (" + out.what +
                              ") exists; nothing was written. Overwriting (--force) replaces "
                              "the CA and every node's certificate and key");
    }
  }
  // Everything is generated before anything is written.
  auto organization = "understudy cluster " + config.cluster.name;
  auto ca_key = generate_key();
  if (!ca_key)
    return std::move(ca_key.error());
  auto ca_cert =
      make_certificate({"understudy CA " + config.cluster.name, organization, ca_key->get(),
                        nullptr, ca_key->get(), ca_validity_days, true, ""});
  if (!ca_cert)
    return std::move(ca_cert.error());
  size_t next = 0;
  auto add_pair = [&](EVP_PKEY* key, X509* cert) -> caf::error {
    auto k = key_pem(key);
    if (!k)
      return std::move(k.error());
    auto c = certificate_pem(cert);
    if (!c)
      return std::move(c.error());
    outputs[next++].text = std::move(*k);
    outputs[next++].text = std::move(*c);
    return {};
  };
  if (auto err = add_pair(ca_key->get(), ca_cert->get()))
    return err;
  for (const auto& n : config.nodes) {
    auto key = generate_key();
    if (!key)
      return std::move(key.error());
    auto host = strip_brackets(n.host);
    auto alt = (is_ip_address(host) ? "IP:" : "DNS:") + host;
    auto cert = make_certificate({n.name, organization, key->get(), ca_cert->get(), ca_key->get(),
                                  node_validity_days, false, alt});
    if (!cert)
      return std::move(cert.error());
    if (auto err = add_pair(key->get(), cert->get()))
      return err;
  }
  std::vector<std::string> written;
  for (const auto& out : outputs) {
    if (auto err = make_directories(fs::path{out.path}.parent_path()))
      return err;
    if (auto err = write_file(out.path, out.text, out.mode))
      return err;
    written.push_back(out.path);
  }
  return written;
}

// -- checking ---------------------------------------------------------------------------------

caf::expected<certificate_info> read_certificate(const std::string& path) {
  auto cert = load_certificate(path, "certificate");
  if (!cert)
    return std::move(cert.error());
  return describe_certificate(cert->get());
}

caf::error check_node_certificate(const node_config& config, std::string_view node) {
  const auto* n = config.find_node(node);
  if (n == nullptr)
    return make_error(security_errc::unknown_node,
                      config.origin + ": has no node '" + std::string{node} + "'");
  if (!config.cluster.security)
    return make_error(security_errc::no_security,
                      config.origin + ": has no [cluster.security] section");
  const auto& sec = *config.cluster.security;
  auto ca = load_certificate(sec.ca, "CA certificate");
  if (!ca)
    return std::move(ca.error());
  auto cert = load_certificate(n->cert, "certificate");
  if (!cert)
    return std::move(cert.error());
  auto key = load_key(n->key, "key");
  if (!key)
    return std::move(key.error());
  if (X509_check_private_key(cert->get(), key->get()) != 1) {
    ERR_clear_error();
    return make_error(security_errc::invalid_certificate,
                      "key " + n->key + " does not belong to certificate " + n->cert);
  }
  for (int purpose : {X509_PURPOSE_SSL_CLIENT, X509_PURPOSE_SSL_SERVER})
    if (auto err = verify_chain(cert->get(), ca->get(), purpose, n->cert, sec.ca))
      return err;
  // CAF does not check names; this only catches mixed-up files.
  auto info = describe_certificate(cert->get());
  auto host = strip_brackets(n->host);
  auto names_host =
      info.subject_cn == host ||
      std::find(info.dns_names.begin(), info.dns_names.end(), host) != info.dns_names.end() ||
      std::find(info.ip_addresses.begin(), info.ip_addresses.end(), host) !=
          info.ip_addresses.end();
  if (info.subject_cn != n->name && !names_host)
    return make_error(security_errc::invalid_certificate,
                      "certificate " + n->cert + " is issued to '" + info.subject_cn +
                          "', not to node '" + n->name + "' (nor to its host " + n->host + ")");
  return {};
}

// -- preparing a node -------------------------------------------------------------------------

caf::expected<std::vector<std::string>> prepare_node_system_config(caf::actor_system_config& cfg,
                                                                   const node_config& config,
                                                                   std::string_view node) {
  const auto* n = config.find_node(node);
  if (n == nullptr)
    return make_error(security_errc::unknown_node,
                      config.origin + ": has no node '" + std::string{node} + "'");
  std::vector<std::string> notes;
  if (config.cluster.security) {
    if (auto err = check_node_certificate(config, node))
      return err;
    struct stat st {};
    if (::stat(n->key.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
      char mode[8];
      std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
      notes.push_back("node '" + n->name + "': its key " + n->key +
                      " is readable by others (mode " + mode + "); chmod 600 it");
    }
  } else if (!is_loopback(n->host)) {
    return make_error(security_errc::insecure_address,
                      config.origin + ": node '" + n->name + "' is on " + n->host +
                          ", which is not loopback, and there is no [cluster.security] section");
  }
  cfg.load<caf::io::middleman>();
  const auto& fd = config.cluster.failure_detection;
  cfg.set("middleman.heartbeat-interval", caf::timespan{fd.heartbeat_interval});
  cfg.set("middleman.connection-timeout", caf::timespan{fd.connection_timeout});
  // Automatic connections (direct connections to nodes learned of through a
  // third) are made by libcaf_io, which has no TLS: they would bypass it.
  cfg.set("middleman.enable-automatic-connections", false);
  if (!config.cluster.security) {
    notes.push_back(config.origin + ": no security settings ([cluster.security]): node '" +
                    n->name + "' talks plain TCP, which is allowed on loopback only");
    return notes;
  }
  const auto& sec = *config.cluster.security;
  // CAF's openssl module reads these members; with any of them set it
  // requires a certificate from every peer and verifies it against the CA
  // file alone (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT).
  cfg.set("openssl.certificate", n->cert);
  cfg.set("openssl.key", n->key);
  cfg.set("openssl.cafile", sec.ca);
  cfg.openssl_certificate = n->cert;
  cfg.openssl_key = n->key;
  cfg.openssl_cafile = sec.ca;
  cfg.openssl_capath.clear();
  cfg.openssl_passphrase.clear();
  cfg.load<caf::openssl::manager>();
  notes.push_back("node '" + n->name + "': mutual TLS with certificate " + n->cert +
                  ", peers must hold a certificate of CA " + sec.ca);
  return notes;
}

// -- publishing and connecting ----------------------------------------------------------------

caf::expected<uint16_t> publish_at(caf::actor_system& sys, const caf::actor& whom,
                                   const std::string& host, uint16_t port) {
  if (is_wildcard(host))
    return make_error(security_errc::insecure_address,
                      "refusing to bind '" + host +
                          "': a node binds its configured address only, never all interfaces");
  if (!whom)
    return caf::make_error(caf::sec::cannot_publish_invalid_actor);
  if (!sys.has_middleman())
    return make_error(security_errc::missing_setting,
                      "the actor system has no middleman (see prepare_node_system_config)");
  auto in = strip_brackets(host);
  if (sys.has_openssl_manager())
    return caf::openssl::publish(whom, port, in.c_str(), true);
  if (!is_loopback(host))
    return make_error(security_errc::insecure_address, "refusing to publish on " + host +
                                                           " without TLS: plain TCP is allowed on "
                                                           "loopback only");
  return sys.middleman().publish(whom, port, in.c_str(), true);
}

caf::expected<caf::actor> connect_to_peer(caf::actor_system& sys, const std::string& host,
                                          uint16_t port, caf::timespan timeout) {
  if (!sys.has_middleman())
    return make_error(security_errc::missing_setting,
                      "the actor system has no middleman (see prepare_node_system_config)");
  caf::io::middleman_actor mm;
  if (sys.has_openssl_manager()) {
    mm = sys.openssl_manager().actor_handle();
  } else if (is_loopback(host)) {
    mm = sys.middleman().actor_handle();
  } else {
    return make_error(security_errc::insecure_address, "refusing to connect to " + host +
                                                           " without TLS: plain TCP is allowed on "
                                                           "loopback only");
  }
  caf::error err;
  caf::actor result;
  caf::scoped_actor self{sys};
  self->request(mm, timeout, caf::connect_atom::value, strip_brackets(host), port)
      .receive(
          [&](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>& ifs) {
            if (!ptr)
              err = caf::make_error(caf::sec::no_actor_published_at_port, port);
            else if (!ifs.empty())
              err = caf::make_error(caf::sec::unexpected_actor_messaging_interface);
            else
              result = caf::actor_cast<caf::actor>(std::move(ptr));
          },
          [&](caf::error& x) { err = std::move(x); });
  if (err)
    return err;
  return result;
}

// -- a workaround for CAF 0.17's TLS transport -----------------------------------------
//
// caf::openssl::session calls SSL_read, SSL_write, SSL_connect and SSL_accept
// without clearing the thread's OpenSSL error queue first, and leaves the
// error of a failed connection in it. All sessions run on the middleman's one
// thread, so when one peer's connection fails (a node is killed), the next
// read on every other connection sees that stale error through SSL_get_error
// and CAF closes them all: the whole cluster loses its connections at once.
// OpenSSL requires the queue to be empty before each of these calls
// (SSL_get_error(3)). This program's definitions come first in symbol lookup,
// so CAF's calls land here: clear the queue, then call OpenSSL's own.

namespace {

template <class F>
F openssl_next(const char* name) {
  auto f = reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
  if (f == nullptr) {
    std::fprintf(stderr, "understudy: cannot find OpenSSL's %s: %s\n", name, ::dlerror());
    std::abort();
  }
  return f;
}

/// The common name of the certificate each TLS peer presented, by the peer's
/// address ("ip port"), for tls_peer_name. Filled once per connection, when
/// its handshake is done (which CAF's non-blocking sessions may finish inside
/// a later read or write); emptied when OpenSSL frees the connection.
struct tls_peers {
  std::mutex mtx;
  /// Name and the connection's serial number, so that a freed connection
  /// does not erase the entry of a newer one with the same address.
  std::map<std::string, std::pair<std::string, uint64_t>> names;
  uint64_t serial = 0;

  static tls_peers& get() {
    static tls_peers instance;
    return instance;
  }
};

std::string address_key(const std::string& ip, uint16_t port) {
  return ip + " " + std::to_string(port);
}

/// Normalises a textual IP address (e.g. "::1" vs "0:0:0:0:0:0:0:1").
std::string canonical_ip(const std::string& host) {
  auto h = strip_brackets(host);
  unsigned char buf[sizeof(in6_addr)];
  char out[INET6_ADDRSTRLEN];
  if (::inet_pton(AF_INET, h.c_str(), buf) == 1 && ::inet_ntop(AF_INET, buf, out, sizeof out))
    return out;
  if (::inet_pton(AF_INET6, h.c_str(), buf) == 1 && ::inet_ntop(AF_INET6, buf, out, sizeof out))
    return out;
  return h;
}

/// A connection's entry in the registry.
struct peer_key {
  std::string address;
  uint64_t serial = 0;
};

/// Frees a connection's entry when OpenSSL frees its session.
void forget_peer(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  auto* key = static_cast<peer_key*>(ptr);
  if (key == nullptr)
    return;
  if (!key->address.empty()) {
    auto& reg = tls_peers::get();
    std::lock_guard<std::mutex> guard{reg.mtx};
    auto i = reg.names.find(key->address);
    if (i != reg.names.end() && i->second.second == key->serial)
      reg.names.erase(i);
  }
  delete key;
}

void note_peer(SSL* ssl) {
  // Every read and write passes here: a lock-free test first. The ex data is
  // the connection's key in the registry (set once its handshake is done).
  static const int seen_index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, forget_peer);
  if (SSL_get_ex_data(ssl, seen_index) != nullptr || SSL_is_init_finished(ssl) != 1)
    return;
  auto* key = new peer_key;
  SSL_set_ex_data(ssl, seen_index, key);
  std::string name;
  if (X509* cert = SSL_get1_peer_certificate(ssl)) {
    char cn[256] = {0};
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn) > 0)
      name = cn;
    X509_free(cert);
  }
  sockaddr_storage sa{};
  socklen_t len = sizeof sa;
  if (::getpeername(SSL_get_fd(ssl), reinterpret_cast<sockaddr*>(&sa), &len) != 0)
    return;
  char ip[INET6_ADDRSTRLEN] = {0};
  uint16_t port = 0;
  if (sa.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&sa);
    ::inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
    port = ntohs(in->sin_port);
  } else if (sa.ss_family == AF_INET6) {
    auto* in = reinterpret_cast<sockaddr_in6*>(&sa);
    ::inet_ntop(AF_INET6, &in->sin6_addr, ip, sizeof ip);
    port = ntohs(in->sin6_port);
  } else {
    return;
  }
  auto& reg = tls_peers::get();
  std::lock_guard<std::mutex> guard{reg.mtx};
  key->address = address_key(ip, port);
  key->serial = ++reg.serial;
  reg.names[key->address] = {name, key->serial};
}

template <class F, class... Ts>
int call_ssl(F next, SSL* ssl, Ts... xs) {
  ERR_clear_error();
  auto ret = next(ssl, xs...);
  note_peer(ssl);
  return ret;
}

} // namespace

std::optional<std::string> tls_peer_name(const std::string& host, uint16_t port) {
  auto& reg = tls_peers::get();
  std::lock_guard<std::mutex> guard{reg.mtx};
  auto i = reg.names.find(address_key(canonical_ip(host), port));
  if (i == reg.names.end())
    return std::nullopt;
  return i->second.first;
}

} // namespace understudy

extern "C" {

int SSL_read(SSL* ssl, void* buf, int num) {
  static auto next = understudy::openssl_next<int (*)(SSL*, void*, int)>("SSL_read");
  return understudy::call_ssl(next, ssl, buf, num);
}

int SSL_write(SSL* ssl, const void* buf, int num) {
  static auto next = understudy::openssl_next<int (*)(SSL*, const void*, int)>("SSL_write");
  return understudy::call_ssl(next, ssl, buf, num);
}

int SSL_connect(SSL* ssl) {
  static auto next = understudy::openssl_next<int (*)(SSL*)>("SSL_connect");
  return understudy::call_ssl(next, ssl);
}

int SSL_accept(SSL* ssl) {
  static auto next = understudy::openssl_next<int (*)(SSL*)>("SSL_accept");
  return understudy::call_ssl(next, ssl);
}

} // extern "C"
