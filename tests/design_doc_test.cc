// docs/DESIGN.md names, for its rules, the tests that check them. This keeps those names
// true in every section: a renamed or deleted test (gtest `Suite.Name` or ctest `name`)
// fails here, naming the reference that went stale. And §2's layout names every file.
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

std::string Doc() {
  return ReadFile(std::filesystem::path(MXSCHED_SOURCE_DIR) / "docs/DESIGN.md");
}

int SectionCount(const std::string& doc) {
  int n = 0;
  while (!Section(doc, n + 1).empty()) ++n;
  return n;
}

TEST(DesignDoc, RulesNameOnlyTestsThatExist) {
  const std::string doc = Doc();
  ASSERT_FALSE(doc.empty());
  const std::set<std::string> tests = TestNames();
  ASSERT_GT(tests.size(), 100u);
  // `Suite.Name`, `Suite.*`, `Instance/Suite.*` in backquotes.
  const std::regex ref(R"(`(?:\w+/)?([A-Z]\w*\.(?:[A-Z]\w*|\*))`)");
  const int sections = SectionCount(doc);
  ASSERT_GE(sections, 11);
  for (int section = 1; section <= sections; ++section) {
    const std::string text = Section(doc, section);
    int refs = 0;
    for (std::sregex_iterator m(text.begin(), text.end(), ref), end; m != end; ++m) {
      ++refs;
      EXPECT_TRUE(tests.contains((*m)[1].str()))
          << "docs/DESIGN.md §" << section << " names " << (*m)[1].str() << ", which is not a test";
    }
    // The sections of rules name the tests of each rule.
    if (section == 1 || section == 4) {
      EXPECT_GT(refs, 5) << "§" << section;
    }
    if (section >= 5 && section <= 8) {
      EXPECT_GT(refs, 0) << "§" << section << " names no test";
    }
  }
}

TEST(DesignDoc, CtestNamesItGivesExist) {
  const std::string doc = Doc();
  const std::string cmake = ReadFile(std::filesystem::path(MXSCHED_SOURCE_DIR) / "CMakeLists.txt");
  // "ctest `name`" and "ctest `a`, `b`" (a list after the word ctest).
  const std::regex ref(R"(ctest ((?:`[a-z0-9_]+`(?:,? (?:and )?)?)+))");
  const std::regex name(R"(`([a-z0-9_]+)`)");
  int refs = 0;
  for (std::sregex_iterator m(doc.begin(), doc.end(), ref), end; m != end; ++m) {
    const std::string list = (*m)[1].str();
    for (std::sregex_iterator n(list.begin(), list.end(), name), e; n != e; ++n) {
      ++refs;
      EXPECT_NE(cmake.find("add_test(NAME " + (*n)[1].str()), std::string::npos)
          << "docs/DESIGN.md names ctest " << (*n)[1].str() << ", which CMakeLists.txt does not add";
    }
  }
  EXPECT_GT(refs, 5);
}

// Every source file of the product, testbed and tools is named (its stem in backquotes) in
// §2's layout, so a reader finds where each concept lives.
TEST(DesignDoc, LayoutNamesEveryFile) {
  const std::string layout = Section(Doc(), 2);
  ASSERT_FALSE(layout.empty());
  const std::filesystem::path root(MXSCHED_SOURCE_DIR);
  for (const char* dir : {"include", "mxsched", "testbed", "tools"}) {
    for (const auto& e : std::filesystem::recursive_directory_iterator(root / dir)) {
      const std::filesystem::path& p = e.path();
      const std::string ext = p.extension().string();
      if (ext != ".h" && ext != ".cc" && ext != ".sh") continue;
      std::string stem = p.stem().string();
      if (stem.ends_with("_test")) continue;  // tests sit beside the code they test
      const bool named = layout.find("`" + stem + "`") != std::string::npos ||
                         layout.find("`" + p.filename().string() + "`") != std::string::npos ||
                         layout.find("`" + stem + " ") != std::string::npos ||
                         layout.find("`" + stem + "(") != std::string::npos;
      EXPECT_TRUE(named) << "docs/DESIGN.md §2 does not name " << std::filesystem::relative(p, root);
    }
  }
}

}  // namespace
}  // namespace mxsched
