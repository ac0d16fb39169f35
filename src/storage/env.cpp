#include "storage/env.h"

namespace tidepool::storage {

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string DirName(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Result<std::string> Env::ReadFileToString(const std::string& path) {
  TP_ASSIGN_OR_RETURN(auto file, OpenRandomAccess(path));
  TP_ASSIGN_OR_RETURN(uint64_t size, FileSize(path));
  std::string out(size, '\0');
  TP_ASSIGN_OR_RETURN(size_t n, file->Read(0, std::as_writable_bytes(std::span(out))));
  out.resize(n);
  return out;
}

Status Env::WriteFileAtomic(const std::string& path, std::span<const std::byte> data) {
  const std::string tmp = path + ".tmp";
  if (FileExists(tmp)) TP_RETURN_IF_ERROR(RemoveFile(tmp));
  {
    TP_ASSIGN_OR_RETURN(auto file, OpenAppendable(tmp));
    TP_RETURN_IF_ERROR(file->Append(data));
    TP_RETURN_IF_ERROR(file->Sync());
    TP_RETURN_IF_ERROR(file->Close());
  }
  TP_RETURN_IF_ERROR(Rename(tmp, path));
  return SyncDir(DirName(path));
}

}  // namespace tidepool::storage
