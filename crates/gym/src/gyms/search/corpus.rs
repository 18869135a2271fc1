//! SearchGym's search engine: a tantivy full-text index (BM25, English stemming, titles boosted) over the
//! generated world's documents, built in RAM once per process and shared by every episode. Any text is a
//! valid query: the lenient parser turns broken syntax into plain terms instead of failing.

use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument};

use super::world::Document;

/// How many results a search shows (the original's `max_search_results`).
pub const MAX_RESULTS: usize = 5;
/// Longest snippet shown for one result, in characters.
pub const SNIPPET_CHARS: usize = 400;
/// Queries are cut to this many characters: longer text adds no precision and only costs time.
const MAX_QUERY_CHARS: usize = 1_000;
/// Titles name the entity a document is about, so a match there counts more.
const TITLE_BOOST: f32 = 2.0;
/// The indexing memory budget: tantivy's minimum per thread; the corpus is far smaller.
const WRITER_BUDGET: usize = 15_000_000;

/// The documents and their index.
pub struct Corpus {
    docs: Vec<Document>,
    searcher: Searcher,
    parser: QueryParser,
    /// `segments[segment_ord][doc_id]` = the document's position in `docs`, read once from the `id` fast
    /// field so that a search never touches the document store.
    segments: Vec<Vec<u32>>,
    // Kept so the searcher's segments stay owned by a live reader.
    _reader: IndexReader,
}

impl std::fmt::Debug for Corpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Corpus({} documents)", self.docs.len())
    }
}

impl Corpus {
    /// Indexes `docs` in RAM with one writer thread (deterministic document order).
    pub fn build(docs: Vec<Document>) -> tantivy::Result<Corpus> {
        let mut schema = Schema::builder();
        let text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        let title = schema.add_text_field("title", text.clone());
        let body = schema.add_text_field("body", text);
        let id = schema.add_u64_field("id", NumericOptions::default().set_fast());
        let index = Index::create_in_ram(schema.build());
        let mut writer: IndexWriter = index.writer_with_num_threads(1, WRITER_BUDGET)?;
        for (i, doc) in docs.iter().enumerate() {
            let mut d = TantivyDocument::default();
            d.add_text(title, &doc.title);
            d.add_text(body, &doc.text);
            d.add_u64(id, i as u64);
            writer.add_document(d)?;
        }
        writer.commit()?;
        writer.wait_merging_threads()?;
        let reader: IndexReader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let searcher = reader.searcher();
        let mut segments = Vec::new();
        for segment in searcher.segment_readers() {
            let column = segment.fast_fields().u64("id")?;
            let ids =
                (0..segment.max_doc()).map(|d| column.first(d).and_then(|i| u32::try_from(i).ok()).unwrap_or(u32::MAX));
            segments.push(ids.collect());
        }
        let mut parser = QueryParser::for_index(&index, vec![title, body]);
        parser.set_field_boost(title, TITLE_BOOST);
        Ok(Corpus { docs, searcher, parser, segments, _reader: reader })
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    pub fn docs(&self) -> &[Document] {
        &self.docs
    }

    /// The best `k` documents for `query` by BM25, best first. Never fails: an unusable query finds nothing.
    pub fn hits(&self, query: &str, k: usize) -> Vec<&Document> {
        if k == 0 || query.trim().is_empty() {
            return Vec::new();
        }
        let query = match query.char_indices().nth(MAX_QUERY_CHARS) {
            Some((cut, _)) => &query[..cut],
            None => query,
        };
        let (parsed, _errors) = self.parser.parse_query_lenient(query);
        let top = match self.searcher.search(&parsed, &TopDocs::with_limit(k).order_by_score()) {
            Ok(top) => top,
            Err(error) => {
                tracing::warn!(%error, "search failed");
                return Vec::new();
            }
        };
        top.into_iter()
            .filter_map(|(_, address)| {
                let i = *self.segments.get(address.segment_ord as usize)?.get(address.doc_id as usize)?;
                self.docs.get(i as usize)
            })
            .collect()
    }

    /// The best `k` results for `query` as (title, snippet) pairs.
    pub fn search(&self, query: &str, k: usize) -> Vec<(String, String)> {
        self.hits(query, k).into_iter().map(|d| (d.title.clone(), snippet(&d.text))).collect()
    }
}

/// The document text, cut at a word boundary when it is longer than `SNIPPET_CHARS`.
pub fn snippet(text: &str) -> String {
    match text.char_indices().nth(SNIPPET_CHARS) {
        None => text.to_string(),
        Some((cut, _)) => {
            let head = &text[..cut];
            let head = head.rfind(' ').map_or(head, |space| &head[..space]);
            format!("{head} …")
        }
    }
}

/// The tool response for a search: numbered results with titles and snippets.
pub fn format_results(query: &str, results: &[(String, String)]) -> String {
    let shown = match query.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &query[..cut]),
        None => query.to_string(),
    };
    if results.is_empty() {
        return format!("No results found for '{shown}'. Try other keywords.");
    }
    let list: Vec<String> =
        results.iter().enumerate().map(|(i, (title, text))| format!("{}. {title}\n- Snippet: {text}", i + 1)).collect();
    format!("Search results for '{shown}':\n{}", list.join("\n\n"))
}
