//! The procedural TravelGym task set: scenarios with the original files' preference-count patterns (reference
//! §4.7), each aspect with hidden preferences drawn from the catalog, ground-truth search arguments, and a
//! database of options split into correct (every preference satisfied; the cheapest is the best), wrong
//! (exactly one preference violated, the tempting near misses) and noise (several violated). Everything is a
//! function of the seed.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::catalog::{self, AspectSpec, FieldKind, Req, Subcat, Variant};
use super::{Aspect, AspectTask, OptionGroups, Preference, SearchArgument, TravelOption, TravelTask};
use crate::split::{self, Split};
use crate::text::mix;

pub const SEED: u64 = 0x7EA7_2025;
/// The original files' patterns with counts proportional to their sizes (3,122 scenarios scaled to 1,000).
pub const PATTERNS: [(&str, usize); 8] =
    [("22", 215), ("33", 184), ("44", 143), ("233", 129), ("333", 113), ("334", 100), ("444", 79), ("2222", 37)];
pub const TASK_COUNT: usize = 1000;
/// Per pattern, as the original split each file 85/15.
const TEST_FRACTION: f64 = 0.15;

/// The trip order used for the dimensions of a scenario.
const TRIP_ORDER: [Aspect; 5] =
    [Aspect::Flight, Aspect::Hotel, Aspect::Apartment, Aspect::RentalCar, Aspect::Restaurant];

/// The whole task set.
pub fn generate_all(seed: u64) -> Vec<TravelTask> {
    let mut out = Vec::with_capacity(TASK_COUNT);
    for (p, (pattern, count)) in PATTERNS.iter().enumerate() {
        let splits = split::assign(*count, TEST_FRACTION, mix(seed, p as u64));
        for (n, split) in splits.into_iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(seed, 100 + p as u64), n as u64));
            out.push(generate_task(&mut rng, pattern, format!("travel{pattern}-{n:03}"), split));
        }
    }
    out
}

struct Trip {
    origin: &'static str,
    city: &'static str,
    hub: &'static str,
    start: String,
    end: String,
    /// A day inside the stay, for the restaurant.
    day: String,
}

fn ordinal(d: u32) -> String {
    let suffix = match (d % 10, d % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{d}{suffix}")
}

fn fill(template: &str, trip: &Trip) -> String {
    template
        .replace("{origin}", trip.origin)
        .replace("{destination}", trip.city)
        .replace("{city}", trip.city)
        .replace("{hub}", trip.hub)
        .replace("{date}", &trip.start)
        .replace("{start}", &trip.start)
        .replace("{end}", &trip.end)
}

/// One scenario with the given pattern (`233`: three aspects with 2, 3 and 3 preferences).
pub fn generate_task(rng: &mut ChaCha8Rng, pattern: &str, id: String, split: Split) -> TravelTask {
    let mut counts: Vec<usize> = pattern.chars().filter_map(|c| c.to_digit(10)).map(|d| d as usize).collect();
    let k = counts.len().clamp(1, 4);
    counts.truncate(k);
    // The original never pairs a hotel with an apartment in one trip.
    let aspects: Vec<Aspect> = loop {
        let mut all = Aspect::ALL.to_vec();
        all.shuffle(rng);
        let pick = &all[..k];
        if !(pick.contains(&Aspect::Hotel) && pick.contains(&Aspect::Apartment)) {
            break TRIP_ORDER.iter().copied().filter(|a| pick.contains(a)).collect();
        }
    };
    counts.shuffle(rng);

    let cities: Vec<&'static str> = catalog::CITIES.iter().map(|(name, _)| *name).collect();
    let city = *cities.choose(rng).unwrap_or(&"Chicago");
    let origin = loop {
        let o = *cities.choose(rng).unwrap_or(&"Boston");
        if o != city {
            break o;
        }
    };
    let hub = loop {
        let h = *catalog::HUBS.choose(rng).unwrap_or(&"Atlanta");
        if h != city && h != origin {
            break h;
        }
    };
    let month = catalog::MONTHS[rng.random_range(0..12)];
    let first = rng.random_range(1..=20u32);
    let nights = rng.random_range(2..=8u32);
    let date = |d: u32| format!("{month} {}", ordinal(d));
    let trip = Trip {
        origin,
        city,
        hub,
        start: date(first),
        end: date(first + nights),
        day: date(first + rng.random_range(0..nights)),
    };

    let mut sentences = Vec::new();
    let purpose = *catalog::PURPOSES.choose(rng).unwrap_or(&"a trip");
    if rng.random_bool(0.5) {
        sentences.push(format!("I'm planning {purpose} to {city}."));
    }
    let mut tasks = Vec::with_capacity(k);
    for (aspect, &n) in aspects.iter().zip(&counts) {
        let template = *catalog::request_templates(*aspect).choose(rng).unwrap_or(&"");
        let sentence = if *aspect == Aspect::Restaurant {
            fill(template, &trip).replace(&trip.start, &trip.day)
        } else {
            fill(template, &trip)
        };
        sentences.push(sentence);
        tasks.push(generate_aspect(rng, catalog::spec(*aspect), n, &trip));
    }
    let needs: Vec<&str> = aspects.iter().map(|a| a.noun()).collect();
    let scenario = format!(
        "The user lives in {origin} and is planning {purpose} to {city} from {} to {}. They need help with: {}. \
         Besides the budget (the cheapest suitable option for each part), they have preferences they have not \
         mentioned yet.",
        trip.start,
        trip.end,
        needs.join(", ")
    );
    TravelTask {
        id,
        split,
        pattern: pattern.to_string(),
        scenario,
        initial_description: sentences.join(" "),
        dimensions: aspects,
        aspects: tasks,
    }
}

fn arguments(aspect: Aspect, trip: &Trip) -> Vec<SearchArgument> {
    let arg = |name: &str, value: &str| SearchArgument { name: name.to_string(), value: value.to_string() };
    match aspect {
        Aspect::Flight => vec![arg("origin", trip.origin), arg("destination", trip.city), arg("date", &trip.start)],
        Aspect::Hotel | Aspect::Apartment => {
            vec![arg("city", trip.city), arg("check_in", &trip.start), arg("check_out", &trip.end)]
        }
        Aspect::RentalCar => {
            vec![arg("city", trip.city), arg("pickup_date", &trip.start), arg("return_date", &trip.end)]
        }
        Aspect::Restaurant => vec![arg("city", trip.city), arg("date", &trip.day)],
    }
}

/// The tags a list field can carry: its fillers, then every subcategory tag on it.
fn tag_candidates(spec: &AspectSpec, field: &str, fillers: &'static [&'static str]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = fillers.to_vec();
    for s in spec.subcats {
        for v in s.variants {
            if let Req::Tag { field: f, tag } = v.req
                && f == field
                && !out.contains(&tag)
            {
                out.push(tag);
            }
        }
    }
    out
}

fn initials(name: &str) -> String {
    let letters: String =
        name.split_whitespace().filter_map(|w| w.chars().next()).filter(|c| c.is_alphabetic()).collect();
    let mut code: String = letters.to_uppercase().chars().take(2).collect();
    while code.len() < 2 {
        code.push('X');
    }
    code
}

/// One option: random fields, then each preference applied as satisfied or violated.
fn build_option(
    rng: &mut ChaCha8Rng,
    spec: &AspectSpec,
    prefs: &[(&Subcat, &Variant)],
    violated: &[bool],
    trip: &Trip,
) -> Vec<(String, Value)> {
    let mut fields: Vec<(String, Value)> = Vec::with_capacity(spec.fields.len());
    for f in spec.fields {
        let value = match f.kind {
            FieldKind::Pool(pool) => Value::String(fill(pool.choose(rng).unwrap_or(&""), trip)),
            FieldKind::Sub => {
                Value::String(fill(catalog::sub_pool(spec.aspect, f.name).choose(rng).unwrap_or(&""), trip))
            }
            FieldKind::Tags(fillers) => {
                let tags: Vec<Value> = tag_candidates(spec, f.name, fillers)
                    .into_iter()
                    .filter(|_| rng.random_bool(0.4))
                    .map(|t| Value::String(t.to_string()))
                    .collect();
                Value::Array(tags)
            }
            FieldKind::Code(_) | FieldKind::Cost => Value::Null,
        };
        fields.push((f.name.to_string(), value));
    }
    for ((_, variant), &bad) in prefs.iter().zip(violated) {
        match variant.req {
            Req::Tag { field, tag } => {
                if let Some((_, Value::Array(tags))) = fields.iter_mut().find(|(n, _)| n == field) {
                    tags.retain(|t| t.as_str() != Some(tag));
                    if !bad {
                        tags.push(Value::String(tag.to_string()));
                    }
                }
            }
            Req::Value { field, good, bad: wrong } => {
                let pool = if bad { wrong } else { good };
                let value = fill(pool.choose(rng).unwrap_or(&""), trip);
                if let Some((_, v)) = fields.iter_mut().find(|(n, _)| n == field) {
                    *v = Value::String(value);
                }
            }
        }
    }
    // Tags in a stable order, so the position of a tag says nothing about the preferences.
    for f in spec.fields {
        if let FieldKind::Tags(fillers) = f.kind {
            let order = tag_candidates(spec, f.name, fillers);
            if let Some((_, Value::Array(tags))) = fields.iter_mut().find(|(n, _)| n == f.name) {
                tags.sort_by_key(|t| order.iter().position(|o| Some(*o) == t.as_str()).unwrap_or(usize::MAX));
            }
        }
        if let FieldKind::Code(source) = f.kind {
            let from = fields.iter().find(|(n, _)| n == source).and_then(|(_, v)| v.as_str()).unwrap_or("");
            let code = format!("{} {}", initials(from), rng.random_range(100..=999));
            if let Some((_, v)) = fields.iter_mut().find(|(n, _)| n == f.name) {
                *v = Value::String(code);
            }
        }
    }
    fields
}

fn set_cost(fields: &mut [(String, Value)], cost: u32) {
    if let Some((_, v)) = fields.iter_mut().find(|(n, _)| n == "cost") {
        *v = Value::from(cost);
    }
}

fn generate_aspect(rng: &mut ChaCha8Rng, spec: &AspectSpec, n_prefs: usize, trip: &Trip) -> AspectTask {
    let n_prefs = n_prefs.min(spec.subcats.len()).max(1);
    let mut order: Vec<usize> = (0..spec.subcats.len()).collect();
    order.shuffle(rng);
    let prefs: Vec<(&Subcat, &Variant)> = order[..n_prefs]
        .iter()
        .map(|&i| {
            let s = &spec.subcats[i];
            (s, s.variants.choose(rng).unwrap_or(&s.variants[0]))
        })
        .collect();

    let n_correct = rng.random_range(2..=4);
    let n_wrong = rng.random_range(4..=7).max(n_prefs);
    let n_noise = rng.random_range(3..=6);
    let (lo, hi) = spec.cost;

    // (kind, violated preferences, cost): kind 0 correct, 1 wrong, 2 noise.
    let mut drafts: Vec<(u8, Vec<(String, Value)>)> = Vec::new();
    let mut correct_costs: Vec<u32> = (0..n_correct).map(|_| rng.random_range(lo..=hi)).collect();
    correct_costs.sort_unstable();
    // A unique cheapest correct option: the others cost strictly more.
    for i in 1..correct_costs.len() {
        if correct_costs[i] <= correct_costs[0] {
            correct_costs[i] = correct_costs[0] + 1 + i as u32;
        }
    }
    for cost in correct_costs {
        let mut fields = build_option(rng, spec, &prefs, &vec![false; n_prefs], trip);
        set_cost(&mut fields, cost);
        drafts.push((0, fields));
    }
    for i in 0..n_wrong {
        let mut violated = vec![false; n_prefs];
        violated[i % n_prefs] = true;
        let mut fields = build_option(rng, spec, &prefs, &violated, trip);
        set_cost(&mut fields, rng.random_range(lo..=hi));
        drafts.push((1, fields));
    }
    for _ in 0..n_noise {
        let mut violated: Vec<bool> = (0..n_prefs).map(|_| rng.random_bool(0.5)).collect();
        if violated.iter().filter(|v| **v).count() < 2.min(n_prefs) {
            for v in violated.iter_mut().take(2) {
                *v = true;
            }
            violated.shuffle(rng);
        }
        let mut fields = build_option(rng, spec, &prefs, &violated, trip);
        set_cost(&mut fields, rng.random_range(lo..=hi));
        drafts.push((2, fields));
    }
    drafts.shuffle(rng);

    let letter = spec.aspect.letter();
    let mut groups = OptionGroups::default();
    let mut best: Option<(u32, String)> = None;
    for (i, (kind, fields)) in drafts.into_iter().enumerate() {
        let option = TravelOption { id: format!("{letter}{}", i + 1), fields };
        match kind {
            0 => {
                let cost = option.cost().unwrap_or(f64::MAX) as u32;
                if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                    best = Some((cost, option.id.clone()));
                }
                groups.correct.push(option);
            }
            1 => groups.wrong.push(option),
            _ => groups.noise.push(option),
        }
    }
    let preferences = prefs
        .iter()
        .map(|(s, v)| Preference {
            aspect: spec.aspect,
            subcategory: s.concept.to_string(),
            text: v.text.to_string(),
            implicit: v.implicit.to_string(),
            keywords: s.keywords.iter().map(|k| k.to_string()).collect(),
        })
        .collect();
    AspectTask {
        aspect: spec.aspect,
        preferences,
        best_id: best.map(|(_, id)| id).unwrap_or_default(),
        correct_ids: groups.correct.iter().map(|o| o.id.clone()).collect(),
        options: groups,
        arguments: arguments(spec.aspect, trip),
    }
}
