// Certificates: making the cluster's CA and its nodes' certificates
// (`understudy certs`), reading them, and checking a node's before it starts.

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <utility>

#include "addresses.hpp"
#include "openssl_handles.hpp"
#include "understudy/cluster/security.hpp"

namespace understudy {

namespace {

namespace fs = std::filesystem;

using detail::bignum_ptr;
using detail::bio_ptr;
using detail::crypto_error;
using detail::is_ip_address;
using detail::openssl_errors;
using detail::pkey_ptr;
using detail::store_ctx_ptr;
using detail::store_ptr;
using detail::strip_brackets;
using detail::x509_ptr;

std::string os_error(int code) {
  return std::strerror(code);
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
  const auto status = status_credential(config);
  outputs.push_back({status.second, "the key of the status reader", 0600, {}});
  outputs.push_back({status.first, "the certificate of the status reader", 0644, {}});
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
  {
    // The status reader: a client certificate that nodes accept for their
    // status report only (no subjectAltName: it serves nothing).
    auto key = generate_key();
    if (!key)
      return std::move(key.error());
    auto cert = make_certificate({status_reader_name, organization, key->get(), ca_cert->get(),
                                  ca_key->get(), node_validity_days, false, ""});
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

std::pair<std::string, std::string> status_credential(const node_config& config) {
  if (!config.cluster.security)
    return {};
  auto dir = fs::path{config.cluster.security->ca}.parent_path();
  auto in_dir = [&](const char* file) {
    return (dir.empty() ? fs::path{file} : dir / file).string();
  };
  return {in_dir("status.pem"), in_dir("status.key")};
}

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

} // namespace understudy
