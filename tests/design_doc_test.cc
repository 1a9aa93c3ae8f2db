// docs/DESIGN.md names, for every rule of §1 (routes) and §4 (configuration), the tests that
// check it. This keeps those names true: a renamed or deleted test fails here, naming the
// rule's reference that went stale.
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace mxsched {
namespace {

std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "Suite.Name" and "Suite.*" for every TEST, TEST_F and TEST_P in the sources.
std::set<std::string> TestNames() {
  std::set<std::string> names;
  const std::regex test(R"(TEST(?:_F|_P)?\(\s*(\w+)\s*,\s*(\w+)\s*\))");
  for (const char* dir : {"mxsched", "tests"}) {
    for (const auto& e : std::filesystem::recursive_directory_iterator(
             std::filesystem::path(MXSCHED_SOURCE_DIR) / dir)) {
      if (e.path().extension() != ".cc") continue;
      const std::string text = ReadFile(e.path());
      for (std::sregex_iterator m(text.begin(), text.end(), test), end; m != end; ++m) {
        names.insert((*m)[1].str() + "." + (*m)[2].str());
        names.insert((*m)[1].str() + ".*");
      }
    }
  }
  return names;
}

// The text of section `number` ("## N. ..." up to the next "## ").
std::string Section(const std::string& doc, int number) {
  const std::string head = "\n## " + std::to_string(number) + ". ";
  const size_t begin = doc.find(head);
  if (begin == std::string::npos) return "";
  const size_t end = doc.find("\n## ", begin + head.size());
  return doc.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

TEST(DesignDoc, RulesNameOnlyTestsThatExist) {
  const std::string doc = ReadFile(std::filesystem::path(MXSCHED_SOURCE_DIR) / "docs/DESIGN.md");
  ASSERT_FALSE(doc.empty());
  const std::set<std::string> tests = TestNames();
  ASSERT_GT(tests.size(), 100u);
  // `Suite.Name`, `Suite.*`, `Instance/Suite.*` in backquotes.
  const std::regex ref(R"(`(?:\w+/)?([A-Z]\w*\.(?:[A-Z]\w*|\*))`)");
  for (int section : {1, 4}) {
    const std::string text = Section(doc, section);
    ASSERT_FALSE(text.empty()) << "docs/DESIGN.md has no section " << section;
    int refs = 0;
    for (std::sregex_iterator m(text.begin(), text.end(), ref), end; m != end; ++m) {
      ++refs;
      EXPECT_TRUE(tests.contains((*m)[1].str()))
          << "docs/DESIGN.md §" << section << " names " << (*m)[1].str() << ", which is not a test";
    }
    EXPECT_GT(refs, 5) << "§" << section << " names the tests of its rules";
  }
}

}  // namespace
}  // namespace mxsched
