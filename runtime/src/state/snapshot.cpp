#include "understudy/state/snapshot.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "understudy/core/errors.hpp"

namespace understudy {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* format_name = "understudy-snapshot/1";
/// Tensors are cut into objects of this many bytes.
constexpr uint64_t object_chunk = uint64_t{8} << 20;
/// Bounds on what a manifest may declare before anything is allocated.
constexpr uint64_t max_payload_bytes = uint64_t{64} << 20;
constexpr uint64_t max_tensor_bytes = uint64_t{1} << 40;
constexpr uint64_t max_manifest_bytes = uint64_t{256} << 20;

caf::error fail(state_errc code, std::string what) {
  return make_error(code, std::move(what));
}

std::string sha256_hex(const void* data, size_t size) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data, size, md, &len, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(hex[md[i] >> 4]);
    out.push_back(hex[md[i] & 15]);
  }
  return out;
}

bool is_object_id(const std::string& id) {
  return id.size() == 64 && std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

fs::path object_path(const std::string& dir, const std::string& id) {
  return fs::path{dir} / "objects" / id.substr(0, 2) / id;
}

fs::path manifest_dir(const std::string& dir) {
  return fs::path{dir} / "manifests";
}

/// Syncs the directory `d` (a rename in it is durable then).
void sync_dir(const fs::path& d) {
  int fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}

/// Writes `size` bytes to `target` through a temporary file: written, synced,
/// renamed, the directory synced.
caf::error write_file(const fs::path& target, const void* data, size_t size) {
  std::error_code ec;
  fs::create_directories(target.parent_path(), ec);
  if (ec)
    return fail(state_errc::io_error,
                "cannot create " + target.parent_path().string() + ": " + ec.message());
  auto tmp = target;
  tmp += ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return fail(state_errc::io_error, "cannot write " + tmp.string() + ": " + std::strerror(errno));
  const auto* p = static_cast<const char*>(data);
  size_t left = size;
  while (left > 0) {
    auto n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      auto why = std::string{std::strerror(errno)};
      ::close(fd);
      fs::remove(tmp, ec);
      return fail(errno == ENOSPC ? state_errc::disk_full : state_errc::io_error,
                  "cannot write " + tmp.string() + ": " + why);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    fs::remove(tmp, ec);
    return fail(state_errc::io_error, "cannot sync " + tmp.string() + ": " + std::strerror(errno));
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return fail(state_errc::io_error, "cannot rename to " + target.string() + ": " + ec.message());
  }
  sync_dir(target.parent_path());
  return {};
}

/// The bytes of file `p` if it has exactly `size` bytes (at most `limit`).
caf::expected<std::vector<std::byte>> read_file(const fs::path& p, uint64_t size,
                                                const std::string& what) {
  std::error_code ec;
  auto actual = fs::file_size(p, ec);
  if (ec)
    return fail(state_errc::corrupt_record, p.string() + " (" + what + ") is missing");
  if (actual != size)
    return fail(state_errc::corrupt_record, p.string() + " (" + what + ") holds " +
                                                std::to_string(actual) + " bytes, not " +
                                                std::to_string(size));
  std::vector<std::byte> out(size);
  std::ifstream in{p, std::ios::binary};
  if (size > 0 && !in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(size)))
    return fail(state_errc::io_error, "cannot read " + p.string() + " (" + what + ")");
  return out;
}

/// Reads object `id` of `size` bytes and checks it against its name.
caf::expected<std::vector<std::byte>> read_object(const std::string& dir, const std::string& id,
                                                  uint64_t size, const std::string& what) {
  auto p = object_path(dir, id);
  auto bytes = read_file(p, size, what);
  if (!bytes)
    return bytes;
  if (sha256_hex(bytes->data(), bytes->size()) != id)
    return fail(state_errc::corrupt_record,
                p.string() + " (" + what + ") does not match its checksum: its bytes changed");
  return bytes;
}

/// Stores `size` bytes as an object (unless an intact one is there); its id.
caf::expected<std::string> put_object(const std::string& dir, const void* data, size_t size,
                                      std::set<std::string>& written) {
  auto id = sha256_hex(data, size);
  auto p = object_path(dir, id);
  std::error_code ec;
  if (written.count(id) == 0) {
    bool intact = false;
    if (fs::exists(p, ec)) {
      auto there = read_object(dir, id, size, "an object");
      intact = static_cast<bool>(there);
    }
    if (!intact)
      if (auto err = write_file(p, data, size))
        return err;
    written.insert(id);
  }
  return id;
}

std::string now_iso() {
  auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string hex64(uint64_t x) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(x));
  return buf;
}

caf::expected<element_type> parse_element_type(const std::string& name) {
  for (int i = 0; i <= static_cast<int>(element_type::bf16); ++i)
    if (to_string(static_cast<element_type>(i)) == name)
      return static_cast<element_type>(i);
  return fail(state_errc::corrupt_record, "unknown element type \"" + name + "\"");
}

/// A manifest read back: its document (checked against its checksum).
struct manifest {
  std::string name;
  fs::path file;
  json doc;
};

caf::expected<manifest> read_manifest(const fs::path& file) {
  manifest m;
  m.file = file;
  m.name = file.stem().string();
  std::error_code ec;
  auto size = fs::file_size(file, ec);
  if (ec || size > max_manifest_bytes)
    return fail(state_errc::corrupt_record, file.string() + ": cannot be read as a manifest");
  std::ifstream in{file, std::ios::binary};
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto top = json::parse(text, nullptr, false);
  if (top.is_discarded() || !top.is_object() || !top.contains("manifest") ||
      !top.contains("sha256") || !top["sha256"].is_string() || !top["manifest"].is_object())
    return fail(state_errc::corrupt_record, file.string() + ": not a snapshot manifest");
  auto body = top["manifest"].dump();
  if (sha256_hex(body.data(), body.size()) != top["sha256"].get<std::string>())
    return fail(state_errc::corrupt_record,
                file.string() + ": the manifest does not match its checksum: it changed");
  m.doc = std::move(top["manifest"]);
  if (m.doc.value("format", std::string{}) != format_name)
    return fail(state_errc::corrupt_record,
                file.string() + ": not a manifest of format " + format_name);
  return m;
}

/// Every manifest of `dir`, oldest step first.
caf::expected<std::vector<manifest>> read_manifests(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(manifest_dir(dir), ec))
    return fail(state_errc::not_found, dir + " holds no snapshots (no manifests/ directory)");
  std::vector<manifest> out;
  for (const auto& e : fs::directory_iterator(manifest_dir(dir), ec)) {
    if (e.path().extension() != ".json")
      continue;
    auto m = read_manifest(e.path());
    if (!m)
      return m.error();
    out.push_back(std::move(*m));
  }
  if (ec)
    return fail(state_errc::io_error, "cannot list " + manifest_dir(dir).string());
  std::sort(out.begin(), out.end(), [](const manifest& a, const manifest& b) {
    return a.doc.value("step", uint64_t{0}) < b.doc.value("step", uint64_t{0});
  });
  return out;
}

/// Each object a manifest refers to, with its size and what it belongs to.
struct object_ref {
  std::string id;
  uint64_t size = 0;
  std::string what;
};

/// The objects of `m`, every field checked; an error names what is wrong.
caf::expected<std::vector<object_ref>> objects_of(const manifest& m) {
  std::vector<object_ref> out;
  try {
    for (const auto& r : m.doc.at("records")) {
      auto path = r.at("path").get<std::string>();
      auto step = r.at("step").get<uint64_t>();
      auto at = path + "@" + std::to_string(step);
      const auto& payload = r.at("payload");
      object_ref p{payload.at("object").get<std::string>(), payload.at("size").get<uint64_t>(),
                   "the payload of " + at};
      if (p.size > max_payload_bytes || p.size % 8 != 0)
        return fail(state_errc::corrupt_record, m.file.string() + ": " + p.what + " declares " +
                                                    std::to_string(p.size) + " bytes");
      out.push_back(std::move(p));
      for (const auto& t : r.at("tensors")) {
        auto name = t.at("name").get<std::string>();
        uint64_t sum = 0;
        size_t i = 0;
        for (const auto& c : t.at("chunks")) {
          object_ref o{c.at("object").get<std::string>(), c.at("size").get<uint64_t>(),
                       "chunk " + std::to_string(i++) + " of tensor '" + name + "' of " + at};
          if (o.size > object_chunk)
            return fail(state_errc::corrupt_record, m.file.string() + ": " + o.what + " declares " +
                                                        std::to_string(o.size) + " bytes");
          sum += o.size;
          out.push_back(std::move(o));
        }
        if (sum != t.at("size").get<uint64_t>() || sum > max_tensor_bytes)
          return fail(state_errc::corrupt_record, m.file.string() + ": the chunks of tensor '" +
                                                      name + "' of " + at +
                                                      " do not add up to its size");
      }
    }
  } catch (const json::exception& e) {
    return fail(state_errc::corrupt_record,
                m.file.string() + ": a malformed manifest (" + e.what() + ")");
  }
  for (const auto& o : out)
    if (!is_object_id(o.id))
      return fail(state_errc::corrupt_record,
                  m.file.string() + ": " + o.what + " names no valid object");
  return out;
}

snapshot_info info_of(const manifest& m, const std::vector<object_ref>& objects,
                      const std::set<std::string>& older) {
  snapshot_info s;
  s.name = m.name;
  s.job = m.doc.value("job", std::string{});
  s.fingerprint = m.doc.value("fingerprint", std::string{});
  s.step = m.doc.value("step", uint64_t{0});
  s.created = m.doc.value("created", std::string{});
  s.records = m.doc.contains("records") ? m.doc["records"].size() : 0;
  std::set<std::string> counted;
  for (const auto& o : objects) {
    if (!counted.insert(o.id).second)
      continue;
    s.bytes += o.size;
    if (older.count(o.id) == 0)
      s.new_bytes += o.size;
  }
  return s;
}

} // namespace

caf::expected<snapshot_info> write_snapshot(const state_store& store, const std::string& dir,
                                            const std::string& job, const std::string& fingerprint,
                                            uint64_t step, const std::vector<std::string>& paths) {
  if (job.empty() || job.front() != '/' || paths.empty())
    return fail(state_errc::invalid_config, "a snapshot needs a job path and its records");
  std::error_code ec;
  std::set<std::string> older;
  if (fs::is_directory(manifest_dir(dir), ec)) {
    auto existing = read_manifests(dir);
    if (!existing)
      return existing.error();
    for (const auto& m : *existing) {
      if (m.doc.value("fingerprint", std::string{}) != fingerprint ||
          m.doc.value("job", std::string{}) != job)
        return fail(state_errc::invalid_config,
                    dir + " holds snapshots of another job (" + m.doc.value("job", std::string{}) +
                        ", fingerprint " + m.doc.value("fingerprint", std::string{}) +
                        "): one directory holds the snapshots of one job");
      if (auto objs = objects_of(m))
        for (auto& o : *objs)
          older.insert(o.id);
    }
  }
  json records = json::array();
  std::set<std::string> written;
  for (const auto& path : paths) {
    json rec;
    auto err = store.read(path, step, [&](const record_view& r) -> caf::error {
      const auto& info = r.info();
      rec["path"] = path;
      rec["step"] = info.step;
      rec["schema_id"] = hex64(info.schema_id);
      rec["schema_version"] = info.schema_version;
      rec["incarnation"] = info.incarnation;
      const auto& words = r.payload_copy();
      auto pid = put_object(dir, words.data(), words.size() * 8, written);
      if (!pid)
        return pid.error();
      rec["payload"] = {{"object", *pid}, {"size", words.size() * 8}};
      json tensors = json::array();
      for (size_t t = 0; t < info.tensors.size(); ++t) {
        const auto& ti = info.tensors[t];
        std::vector<std::byte> bytes(ti.size);
        if (auto e = r.copy_tensor(t, bytes.data(), bytes.size()))
          return e;
        json chunks = json::array();
        for (uint64_t at = 0; at < ti.size || (ti.size == 0 && at == 0); at += object_chunk) {
          auto n = std::min<uint64_t>(object_chunk, ti.size - at);
          auto id = put_object(dir, bytes.data() + at, n, written);
          if (!id)
            return id.error();
          chunks.push_back({{"object", *id}, {"size", n}});
          if (ti.size == 0)
            break;
        }
        tensors.push_back({{"name", ti.name},
                           {"type", to_string(ti.type)},
                           {"shape", ti.shape},
                           {"size", ti.size},
                           {"chunks", chunks}});
      }
      rec["tensors"] = tensors;
      return {};
    });
    if (err)
      return err;
    records.push_back(std::move(rec));
  }
  json body{{"format", format_name}, {"job", job},           {"fingerprint", fingerprint},
            {"step", step},          {"created", now_iso()}, {"records", records}};
  auto name = "step-" + std::to_string(step);
  auto file = manifest_dir(dir) / (name + ".json");
  if (fs::exists(file, ec)) {
    auto there = read_manifest(file);
    if (there && there->doc.at("records") == body.at("records"))
      return info_of(*there, *objects_of(*there), older);
    return fail(state_errc::invalid_config, file.string() + " already holds a snapshot of step " +
                                                std::to_string(step) +
                                                " with other contents; it is not replaced");
  }
  auto text = body.dump();
  json top{{"manifest", body}, {"sha256", sha256_hex(text.data(), text.size())}};
  auto out = top.dump(1);
  if (auto err = write_file(file, out.data(), out.size()))
    return err;
  manifest m{name, file, std::move(body)};
  auto objs = objects_of(m);
  if (!objs)
    return objs.error();
  return info_of(m, *objs, older);
}

caf::expected<std::vector<snapshot_info>> list_snapshots(const std::string& dir) {
  auto ms = read_manifests(dir);
  if (!ms)
    return ms.error();
  std::vector<snapshot_info> out;
  std::set<std::string> older;
  for (const auto& m : *ms) {
    auto objs = objects_of(m);
    if (!objs)
      return objs.error();
    out.push_back(info_of(m, *objs, older));
    for (auto& o : *objs)
      older.insert(o.id);
  }
  return out;
}

caf::expected<std::vector<std::string>> verify_snapshots(const std::string& dir,
                                                         const std::string& name) {
  auto ms = read_manifests(dir);
  if (!ms)
    return ms.error();
  std::vector<std::string> problems;
  bool found = false;
  std::map<std::string, std::string> checked; // object -> its problem ("" if none)
  for (const auto& m : *ms) {
    if (!name.empty() && m.name != name)
      continue;
    found = true;
    auto objs = objects_of(m);
    if (!objs) {
      problems.push_back(describe(objs.error()));
      continue;
    }
    for (const auto& o : *objs) {
      auto it = checked.find(o.id);
      if (it == checked.end()) {
        auto bytes = read_object(dir, o.id, o.size, o.what + " in " + m.name);
        it = checked.emplace(o.id, bytes ? std::string{} : describe(bytes.error())).first;
      }
      if (!it->second.empty())
        problems.push_back(m.name + ": " + o.what + ": " + it->second);
    }
  }
  if (!found)
    return fail(state_errc::not_found, dir + " holds no snapshot " + name);
  return problems;
}

caf::expected<loaded_snapshot> read_snapshot(const std::string& dir, const std::string& name) {
  auto ms = read_manifests(dir);
  if (!ms)
    return ms.error();
  if (ms->empty())
    return fail(state_errc::not_found, dir + " holds no snapshot");
  const manifest* m = &ms->back();
  if (!name.empty()) {
    m = nullptr;
    for (const auto& x : *ms)
      if (x.name == name)
        m = &x;
    if (m == nullptr)
      return fail(state_errc::not_found, dir + " holds no snapshot " + name);
  }
  auto objs = objects_of(*m);
  if (!objs)
    return objs.error();
  loaded_snapshot out;
  out.info = info_of(*m, *objs, {});
  try {
    for (const auto& r : m->doc.at("records")) {
      auto cp = std::make_shared<checkpoint>();
      cp->path = r.at("path").get<std::string>();
      cp->step = r.at("step").get<uint64_t>();
      cp->schema_id = std::stoull(r.at("schema_id").get<std::string>(), nullptr, 16);
      cp->schema_version = r.at("schema_version").get<uint32_t>();
      cp->incarnation = r.at("incarnation").get<uint64_t>();
      auto at = cp->path + "@" + std::to_string(cp->step);
      const auto& payload = r.at("payload");
      auto pbytes = read_object(dir, payload.at("object").get<std::string>(),
                                payload.at("size").get<uint64_t>(), "the payload of " + at);
      if (!pbytes)
        return pbytes.error();
      cp->payload.resize(pbytes->size() / 8);
      if (!pbytes->empty())
        std::memcpy(cp->payload.data(), pbytes->data(), pbytes->size());
      for (const auto& t : r.at("tensors")) {
        tensor_data td;
        td.name = t.at("name").get<std::string>();
        auto type = parse_element_type(t.at("type").get<std::string>());
        if (!type)
          return fail(state_errc::corrupt_record, m->file.string() + ": tensor '" + td.name +
                                                      "' of " + at + ": " + describe(type.error()));
        td.type = *type;
        td.shape = t.at("shape").get<std::vector<uint64_t>>();
        auto size = t.at("size").get<uint64_t>();
        uint64_t elements = 1;
        for (auto d : td.shape)
          elements = d == 0 || elements <= max_tensor_bytes / d ? elements * d : max_tensor_bytes;
        if (elements * element_size(td.type) != size)
          return fail(state_errc::corrupt_record, m->file.string() + ": tensor '" + td.name +
                                                      "' of " + at +
                                                      ": its shape does not match its size");
        auto bytes = std::make_shared<std::vector<std::byte>>();
        bytes->reserve(size);
        size_t i = 0;
        for (const auto& c : t.at("chunks")) {
          auto chunk =
              read_object(dir, c.at("object").get<std::string>(), c.at("size").get<uint64_t>(),
                          "chunk " + std::to_string(i++) + " of tensor '" + td.name + "' of " + at);
          if (!chunk)
            return chunk.error();
          bytes->insert(bytes->end(), chunk->begin(), chunk->end());
        }
        td.data = bytes->data();
        td.size = bytes->size();
        td.owner = bytes;
        cp->tensors.push_back(std::move(td));
      }
      out.records.push_back(std::move(cp));
    }
  } catch (const std::exception& e) {
    return fail(state_errc::corrupt_record,
                m->file.string() + ": a malformed manifest (" + e.what() + ")");
  }
  return out;
}

caf::error import_snapshot(const loaded_snapshot& snap, state_store& store) {
  std::vector<const checkpoint*> puts;
  for (const auto& r : snap.records)
    puts.push_back(r.get());
  std::vector<caf::error> results;
  if (auto err = store.commit(puts, results, std::vector<bool>(puts.size(), true)))
    return err;
  for (size_t i = 0; i < results.size(); ++i)
    if (results[i])
      return make_error(
          state_errc::version_conflict,
          puts[i]->path + "@" + std::to_string(puts[i]->step) + ": " + describe(results[i]));
  return {};
}

caf::expected<prune_report> prune_snapshots(const std::string& dir, size_t keep_last,
                                            uint64_t keep_every) {
  if (keep_last == 0)
    return fail(state_errc::invalid_config, "prune keeps at least the newest snapshot");
  auto ms = read_manifests(dir);
  if (!ms)
    return ms.error();
  prune_report out;
  std::set<std::string> referenced;
  std::vector<const manifest*> doomed;
  for (size_t i = 0; i < ms->size(); ++i) {
    const auto& m = (*ms)[i];
    auto step = m.doc.value("step", uint64_t{0});
    bool keep = i + keep_last >= ms->size() || (keep_every > 0 && step % keep_every == 0);
    if (!keep) {
      doomed.push_back(&m);
      continue;
    }
    auto objs = objects_of(m);
    if (!objs)
      return objs.error(); // a damaged kept snapshot: remove nothing it may need
    for (auto& o : *objs)
      referenced.insert(o.id);
  }
  std::error_code ec;
  for (const auto* m : doomed) {
    fs::remove(m->file, ec);
    if (ec)
      return fail(state_errc::io_error, "cannot remove " + m->file.string() + ": " + ec.message());
    out.removed.push_back(m->name);
  }
  sync_dir(manifest_dir(dir));
  auto objects = fs::path{dir} / "objects";
  if (fs::is_directory(objects, ec))
    for (const auto& sub : fs::directory_iterator(objects, ec))
      for (const auto& e : fs::directory_iterator(sub.path(), ec)) {
        auto id = e.path().filename().string();
        if (referenced.count(id) != 0)
          continue;
        auto size = fs::file_size(e.path(), ec);
        if (fs::remove(e.path(), ec)) {
          ++out.objects_removed;
          out.bytes_removed += ec ? 0 : size;
        }
      }
  return out;
}

namespace {

fs::path promotion_file(const std::string& dir) {
  return fs::path{dir} / "PROMOTED";
}

} // namespace

caf::expected<snapshot_promotion> record_promotion(const std::string& dir,
                                                   const std::string& cluster, uint64_t step) {
  snapshot_promotion p{cluster, step, now_iso()};
  auto text = json{{"cluster", p.cluster}, {"step", p.step}, {"when", p.when}}.dump() + "\n";
  if (auto err = write_file(promotion_file(dir), text.data(), text.size()))
    return err;
  return p;
}

std::optional<snapshot_promotion> read_promotion(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(promotion_file(dir), ec))
    return std::nullopt;
  std::ifstream in{promotion_file(dir)};
  auto doc = json::parse(in, nullptr, false);
  snapshot_promotion p;
  if (doc.is_object()) {
    p.cluster = doc.value("cluster", std::string{});
    p.step = doc.value("step", uint64_t{0});
    p.when = doc.value("when", std::string{});
  }
  if (p.cluster.empty())
    p.cluster = "(unreadable " + promotion_file(dir).string() + ")";
  return p;
}

} // namespace understudy
