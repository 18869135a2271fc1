//! The fictional world behind SearchGym's corpus: countries, cities, seas, rivers, people, companies,
//! structures, books, inventions, sports clubs and institutes, all named from random syllables and linked by
//! facts (capital, birthplace, founder, author, builder, inventor…). One seed gives the same world, its
//! encyclopedia-style documents and its questions on every machine, so nothing large lives in git and no fact
//! can be known from outside the corpus.

use std::collections::{HashMap, HashSet};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The seed of the built-in world.
pub const WORLD_SEED: u64 = 0x5EA2_C4ED_2025;
/// How many questions the built-in task set asks.
pub const QUESTION_COUNT: usize = 200;

const COUNTRIES: usize = 40;
const CITIES_PER_COUNTRY: usize = 8;
const SEAS: usize = 12;
const RIVERS: usize = 80;
const PEOPLE: usize = 700;
const COMPANIES: usize = 250;
const STRUCTURES: usize = 150;
const BOOKS: usize = 300;
const INVENTIONS: usize = 150;
const CLUBS: usize = 150;
const INSTITUTES: usize = 100;

/// One encyclopedia entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub title: String,
    pub text: String,
}

/// What kind of thing an answer names; the scripted judge uses it to spot a second candidate of the same kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerKind {
    Year,
    Person,
    City,
    Country,
    Company,
    River,
    Sea,
}

/// One search along a question's chain of facts: the query a careful searcher would type, the document that
/// holds the fact, and the fact it yields (an intermediate entity, or the answer on the last hop).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    pub query: String,
    pub title: String,
    pub finds: String,
}

/// A generated question with its answer, accepted aliases and hop chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub question: String,
    pub answer: String,
    pub aliases: Vec<String>,
    pub kind: AnswerKind,
    pub hops: Vec<Hop>,
}

/// The generated world: its documents, its questions, and the names the scripted judge recognises.
pub struct World {
    pub docs: Vec<Document>,
    pub questions: Vec<Question>,
    /// Lowercased name token -> the kind of entity it names (cities, countries and their demonyms, company,
    /// river and sea names, surnames).
    pub lexicon: HashMap<String, AnswerKind>,
    /// Lowercased given names (shared by several people, so they never identify one alone).
    pub first_names: HashSet<String>,
}

// ---------------------------------------------------------------------------------------------------------
// Names

const ONSETS: &[&str] = &[
    "b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "sk", "t", "th", "tr", "v",
    "z", "c", "st", "sh", "vr",
];
const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "a", "e", "o", "i", "a", "ei", "ou", "ia"];
const CODAS: &[&str] = &["n", "r", "l", "s", "th", "m", "nd", "rk", "sk", "ll", "v", "x", "rn"];

/// Words a generated name must never be: template words of the questions and documents, and real places and
/// people a syllable generator could stumble on.
const BLOCKED: &[&str] = &[
    "braga", "anand", "bremen", "trier", "basel", "liege", "sidon", "tyre", "gaza", "herat", "kabul", "lagos",
    "luanda", "river", "city", "born", "capital", "founded", "company", "bridge", "tower", "works", "where", "which",
    "whose", "there", "these", "those", "other", "sea", "state", "paris", "rome", "roma", "sudan", "china", "india",
    "peru", "chad", "mali", "texas", "boston", "dallas", "london", "berlin", "moscow", "tokyo", "delhi", "cairo",
    "lima", "oslo", "kiev", "nile", "volga", "congo", "tiber", "seine", "maria", "karen", "laura", "sara", "sarah",
    "diana", "elena", "linda", "monica", "tina", "nina", "dora", "vera", "rosa", "lena", "tokyo", "kyoto", "osaka",
    "seoul", "milan", "turin", "genoa", "malta", "samoa", "tonga", "kenya", "ghana", "niger", "benin", "gabon",
    "yemen", "oman", "qatar", "nepal", "bhutan", "burma", "laos", "korea", "japan", "syria", "libya", "haiti", "cuba",
    "belize", "panama", "chile", "brazil", "spain", "italy", "greece", "malawi", "zambia", "rwanda", "uganda", "tunis",
    "sofia", "riga", "minsk", "baku", "dubai", "doha", "hanoi", "manila", "jakarta", "sydney", "perth", "denver",
    "austin", "miami", "salem", "derry", "cork", "bath", "york", "leeds", "hull", "dover", "thames", "danube", "rhine",
    "ganges", "indus", "tigris", "jordan", "amazon", "mekong", "yukon", "hudson", "delaware", "carol", "sonia",
    "tania", "mira", "lara", "kira", "dara", "tara", "zara", "sasha", "misha", "pasha", "dasha", "masha", "natasha",
    "salome", "romeo", "homer", "plato", "nero", "cato", "medusa", "hydra", "gorgon", "theta", "delta", "sigma",
    "gamma", "zeta", "kappa", "lambda", "omega", "alpha", "beta", "tesla", "nokia", "lego", "sony", "toyota", "mazda",
    "honda", "yamaha", "subaru", "lada", "skoda", "volvo", "saab", "fiat", "lancia", "kodak", "xerox", "intel", "nike",
    "puma", "fila", "zara", "ikea", "gucci", "prada", "chanel", "dior", "pizza", "pasta", "tomato", "potato", "banana",
    "cobra", "puma", "llama", "koala", "panda", "hyena", "zebra", "sofa", "radio", "piano", "opera", "drama", "vista",
    "fiesta", "siesta", "gusto", "torso", "motto", "lotto", "sushi", "tofu", "kiwi", "mango", "papaya", "nasa", "yoga",
    "karma", "mantra", "sauna", "tundra", "taiga",
];

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn demonym(country: &str) -> String {
    if country.ends_with('a') {
        format!("{country}n")
    } else if country.ends_with(['e', 'i', 'o', 'u', 'y']) {
        format!("{country}an")
    } else {
        format!("{country}ian")
    }
}

/// "1,234,000"-style thousands separators.
fn with_commas(n: u32) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// Entities

struct Country {
    name: String,
    capital: usize,
    cities: Vec<usize>,
    independence: u32,
    population_m: u32,
}

struct City {
    name: String,
    country: usize,
    founded: u32,
    population: u32,
    river: Option<usize>,
}

struct Sea {
    base: String,
    title: String,
    of_form: bool,
    countries: Vec<usize>,
}

struct River {
    base: String,
    country: usize,
    sea: usize,
    cities: Vec<usize>,
    length_km: u32,
}

struct Person {
    first: String,
    last: String,
    born: u32,
    city: usize,
    female: bool,
    profession: &'static str,
    /// (year, what they did), listed in the biography in time order.
    works: Vec<(u32, String)>,
}

impl Person {
    fn full(&self) -> String {
        format!("{} {}", self.first, self.last)
    }
}

struct Company {
    base: String,
    name: String,
    founded: u32,
    founder: usize,
    city: usize,
    industry: &'static str,
    projects: Vec<usize>,
}

struct Structure {
    name: String,
    kind: &'static str,
    city: usize,
    company: usize,
    architect: usize,
    year: u32,
}

struct Book {
    title: String,
    author: usize,
    year: u32,
    genre: &'static str,
    setting: usize,
}

struct Invention {
    name: String,
    what: &'static str,
    inventor: usize,
    year: u32,
    maker: Option<usize>,
}

struct Club {
    name: String,
    city: usize,
    founded: u32,
    sport: &'static str,
    stadium: String,
    founder: usize,
}

struct Institute {
    name: String,
    field: &'static str,
    city: usize,
    founded: u32,
    founder: usize,
}

const ENTREPRENEURS: std::ops::Range<usize> = 0..150;
const WRITERS: std::ops::Range<usize> = 150..310;
const INVENTORS: std::ops::Range<usize> = 310..410;
const ARCHITECTS: std::ops::Range<usize> = 410..490;
const SCHOLARS: std::ops::Range<usize> = 490..570;

const COMPANY_SUFFIXES: &[&str] = &[
    "Works",
    "Industries",
    "Holdings",
    "Foundry",
    "Shipping",
    "Textiles",
    "Mills",
    "Group",
    "Motors",
    "Trading Company",
];
const INDUSTRIES: &[&str] = &[
    "steel",
    "shipbuilding",
    "textile",
    "railway",
    "engineering",
    "chemical",
    "glassmaking",
    "construction",
    "printing",
    "mining",
];
const STRUCTURE_KINDS: &[&str] = &["Bridge", "Tower", "Dam", "Viaduct", "Lighthouse", "Canal"];
const GENRES: &[&str] = &["novel", "novel", "novel", "poetry collection", "play", "memoir", "short story collection"];
const ADJECTIVES: &[&str] = &[
    "Silent",
    "Crimson",
    "Hollow",
    "Distant",
    "Golden",
    "Broken",
    "Winter",
    "Last",
    "Quiet",
    "Burning",
    "Forgotten",
    "Narrow",
    "Pale",
    "Restless",
    "Hidden",
    "Northern",
    "Iron",
    "Bitter",
    "Lonely",
    "Endless",
];
const NOUNS: &[&str] = &[
    "Harbor",
    "Orchard",
    "Lantern",
    "Garden",
    "Mirror",
    "Voyage",
    "Kingdom",
    "Letters",
    "Shore",
    "Archive",
    "Summer",
    "Crossing",
    "House",
    "Road",
    "Tide",
    "Inheritance",
    "Chorus",
    "Window",
    "Valley",
    "Bells",
];
const DEVICES: &[(&str, &str)] = &[
    ("Loom", "weaving loom"),
    ("Engine", "steam engine"),
    ("Lamp", "safety lamp"),
    ("Press", "printing press"),
    ("Telescope", "reflecting telescope"),
    ("Valve", "pressure valve"),
    ("Compass", "marine compass"),
    ("Calculator", "mechanical calculator"),
    ("Pump", "water pump"),
    ("Kiln", "brick kiln"),
    ("Sextant", "navigation sextant"),
    ("Turbine", "water turbine"),
];
const SPORTS: &[&str] = &["football", "rowing", "hockey", "basketball", "rugby", "handball", "cycling"];
const CLUB_FORMS: &[&str] = &["FC {}", "{} Rovers", "{} United", "{} Athletic", "Sporting {}", "{} Wanderers"];
const INSTITUTE_KINDS: &[(&str, &str)] = &[
    ("Institute", "research"),
    ("Academy", "arts"),
    ("University", "public"),
    ("Observatory", "astronomical"),
    ("Conservatory", "music"),
    ("Museum", "history"),
];
const OTHER_PROFESSIONS: &[&str] = &["painter", "composer", "athlete", "actor", "politician", "sculptor", "diplomat"];
const SCHOLAR_PROFESSIONS: &[&str] = &["physician", "chemist", "historian", "astronomer", "mathematician"];
const WRITER_PROFESSIONS: &[&str] = &["novelist", "poet", "writer", "playwright"];
const ENTREPRENEUR_PROFESSIONS: &[&str] = &["industrialist", "entrepreneur", "merchant", "banker"];
const INVENTOR_PROFESSIONS: &[&str] = &["engineer", "inventor", "instrument maker"];

struct Builder {
    rng: ChaCha8Rng,
    used: HashSet<String>,
    countries: Vec<Country>,
    cities: Vec<City>,
    seas: Vec<Sea>,
    rivers: Vec<River>,
    people: Vec<Person>,
    companies: Vec<Company>,
    structures: Vec<Structure>,
    books: Vec<Book>,
    inventions: Vec<Invention>,
    clubs: Vec<Club>,
    institutes: Vec<Institute>,
}

impl Builder {
    /// A fresh pronounceable name, unique in the world and never a blocked word.
    fn fresh(&mut self) -> String {
        loop {
            let syllables = if self.rng.random_bool(0.8) { 2 } else { 3 };
            let mut s = String::new();
            for i in 0..syllables {
                if i > 0 || self.rng.random_bool(0.8) {
                    s.push_str(pick(&mut self.rng, ONSETS));
                }
                s.push_str(pick(&mut self.rng, VOWELS));
            }
            if self.rng.random_bool(0.55) {
                s.push_str(pick(&mut self.rng, CODAS));
            }
            if !(5..=9).contains(&s.len()) || BLOCKED.contains(&s.as_str()) || crate::text::is_stopword(&s) {
                continue;
            }
            if self.used.insert(s.clone()) {
                return capitalise(&s);
            }
        }
    }

    fn year(&mut self, from: u32, to: u32) -> u32 {
        self.rng.random_range(from..=to.max(from))
    }

    fn build(seed: u64) -> Builder {
        let mut b = Builder {
            rng: ChaCha8Rng::seed_from_u64(seed),
            used: HashSet::new(),
            countries: Vec::new(),
            cities: Vec::new(),
            seas: Vec::new(),
            rivers: Vec::new(),
            people: Vec::new(),
            companies: Vec::new(),
            structures: Vec::new(),
            books: Vec::new(),
            inventions: Vec::new(),
            clubs: Vec::new(),
            institutes: Vec::new(),
        };
        b.places();
        b.people();
        b.organisations();
        b
    }

    fn places(&mut self) {
        for c in 0..COUNTRIES {
            let name = self.fresh();
            let mut cities = Vec::new();
            for _ in 0..CITIES_PER_COUNTRY {
                let city = City {
                    name: self.fresh(),
                    country: c,
                    founded: self.year(600, 1850),
                    population: self.rng.random_range(8..2400) * 1000 + self.rng.random_range(0..1000),
                    river: None,
                };
                cities.push(self.cities.len());
                self.cities.push(city);
            }
            let capital = cities[0];
            self.cities[capital].population = self.rng.random_range(900..6000) * 1000 + self.rng.random_range(0..1000);
            let country = Country {
                name,
                capital,
                cities,
                independence: self.year(1200, 1990),
                population_m: self.rng.random_range(1..90),
            };
            self.countries.push(country);
        }
        for _ in 0..SEAS {
            let base = self.fresh();
            let of_form = self.rng.random_bool(0.5);
            let title = if of_form { format!("Sea of {base}") } else { format!("{base} Sea") };
            self.seas.push(Sea { base, title, of_form, countries: Vec::new() });
        }
        for r in 0..RIVERS {
            let base = self.fresh();
            let country = r % COUNTRIES;
            let sea = self.rng.random_range(0..SEAS);
            // A river passes through one to three cities of its country that have no river yet.
            let free: Vec<usize> =
                self.countries[country].cities.iter().copied().filter(|&c| self.cities[c].river.is_none()).collect();
            let n = self.rng.random_range(1..=3).min(free.len());
            let mut cities: Vec<usize> = free.choose_multiple(&mut self.rng, n).copied().collect();
            cities.sort_unstable();
            for &c in &cities {
                self.cities[c].river = Some(r);
            }
            if !self.seas[sea].countries.contains(&country) {
                self.seas[sea].countries.push(country);
            }
            let length_km = self.rng.random_range(40..2200);
            self.rivers.push(River { base, country, sea, cities, length_km });
        }
    }

    fn people(&mut self) {
        let first_names: Vec<String> = (0..120).map(|_| self.fresh()).collect();
        for i in 0..PEOPLE {
            let (profession, born) = if ENTREPRENEURS.contains(&i) {
                (pick(&mut self.rng, ENTREPRENEUR_PROFESSIONS), self.year(1720, 1930))
            } else if WRITERS.contains(&i) {
                (pick(&mut self.rng, WRITER_PROFESSIONS), self.year(1720, 1960))
            } else if INVENTORS.contains(&i) {
                (pick(&mut self.rng, INVENTOR_PROFESSIONS), self.year(1720, 1920))
            } else if ARCHITECTS.contains(&i) {
                (pick(&mut self.rng, &["architect", "civil engineer"]), self.year(1720, 1930))
            } else if SCHOLARS.contains(&i) {
                (pick(&mut self.rng, SCHOLAR_PROFESSIONS), self.year(1720, 1930))
            } else {
                (pick(&mut self.rng, OTHER_PROFESSIONS), self.year(1720, 1990))
            };
            // A given name keeps one gender across the world.
            let given = self.rng.random_range(0..first_names.len());
            let first = first_names[given].clone();
            let person = Person {
                first,
                last: self.fresh(),
                born,
                city: self.rng.random_range(0..self.cities.len()),
                female: given % 2 == 0,
                profession,
                works: Vec::new(),
            };
            self.people.push(person);
        }
    }

    fn organisations(&mut self) {
        for _ in 0..COMPANIES {
            let base = self.fresh();
            let name = format!("{base} {}", pick(&mut self.rng, COMPANY_SUFFIXES));
            let founder = self.rng.random_range(ENTREPRENEURS);
            let born = self.people[founder].born;
            let founded = self.year(born + 24, born + 60);
            let city = self.rng.random_range(0..self.cities.len());
            let industry = pick(&mut self.rng, INDUSTRIES);
            self.people[founder].works.push((founded, format!("founded {name} in {founded}")));
            self.companies.push(Company { base, name, founded, founder, city, industry, projects: Vec::new() });
        }
        for s in 0..STRUCTURES {
            let kind = pick(&mut self.rng, STRUCTURE_KINDS);
            let name = format!("{} {kind}", self.fresh());
            let company = self.rng.random_range(0..COMPANIES);
            let architect = self.rng.random_range(ARCHITECTS);
            let earliest = (self.companies[company].founded + 2).max(self.people[architect].born + 26);
            let year = self.year(earliest, earliest + 25);
            let city = self.rng.random_range(0..self.cities.len());
            self.companies[company].projects.push(s);
            self.people[architect].works.push((year, format!("designed the {name}, completed in {year}")));
            self.structures.push(Structure { name, kind, city, company, architect, year });
        }
        let mut titles = HashSet::new();
        while self.books.len() < BOOKS {
            let title =
                format!("The {} {} of {}", pick(&mut self.rng, ADJECTIVES), pick(&mut self.rng, NOUNS), self.fresh());
            if !titles.insert(title.clone()) {
                continue;
            }
            let author = self.rng.random_range(WRITERS);
            let born = self.people[author].born;
            let year = self.year(born + 20, born + 70);
            let genre = pick(&mut self.rng, GENRES);
            let setting = self.rng.random_range(0..self.cities.len());
            self.people[author].works.push((year, format!("wrote the {genre} {title} ({year})")));
            self.books.push(Book { title, author, year, genre, setting });
        }
        for _ in 0..INVENTIONS {
            let (device, what) = *DEVICES.choose(&mut self.rng).unwrap_or(&DEVICES[0]);
            let name = format!("{} {device}", self.fresh());
            let inventor = self.rng.random_range(INVENTORS);
            let born = self.people[inventor].born;
            let year = self.year(born + 20, born + 60);
            let maker = self.rng.random_bool(0.5).then(|| self.rng.random_range(0..COMPANIES));
            self.people[inventor].works.push((year, format!("invented the {name} in {year}")));
            self.inventions.push(Invention { name, what, inventor, year, maker });
        }
        for _ in 0..CLUBS {
            let base = self.fresh();
            let name = pick(&mut self.rng, CLUB_FORMS).replace("{}", &base);
            let stadium = format!("{} Park", self.fresh());
            let founder = if self.rng.random_bool(0.5) {
                self.rng.random_range(ENTREPRENEURS)
            } else {
                self.rng.random_range(SCHOLARS.end..PEOPLE)
            };
            let born = self.people[founder].born;
            let founded = self.year(born + 20, born + 60);
            let city = self.rng.random_range(0..self.cities.len());
            let sport = pick(&mut self.rng, SPORTS);
            self.people[founder].works.push((founded, format!("founded the {sport} club {name} in {founded}")));
            self.clubs.push(Club { name, city, founded, sport, stadium, founder });
        }
        for _ in 0..INSTITUTES {
            let (kind, field) = *INSTITUTE_KINDS.choose(&mut self.rng).unwrap_or(&INSTITUTE_KINDS[0]);
            let name = format!("{} {kind}", self.fresh());
            let founder = self.rng.random_range(SCHOLARS);
            let born = self.people[founder].born;
            let founded = self.year(born + 28, born + 65);
            let city = self.rng.random_range(0..self.cities.len());
            self.people[founder].works.push((founded, format!("founded the {name} in {founded}")));
            self.institutes.push(Institute { name, field, city, founded, founder });
        }
    }

    // -----------------------------------------------------------------------------------------------------
    // Documents

    fn place(&self, city: usize) -> String {
        let c = &self.cities[city];
        format!("{}, {}", c.name, self.countries[c.country].name)
    }

    fn river_title(&self, r: usize) -> String {
        format!("{} River", self.rivers[r].base)
    }

    fn documents(&mut self) -> Vec<Document> {
        let mut docs = Vec::new();
        for c in &self.countries {
            let capital = &self.cities[c.capital].name;
            let others: Vec<&str> = c.cities[1..4].iter().map(|&i| self.cities[i].name.as_str()).collect();
            let text = format!(
                "{} is a country whose capital and largest city is {capital}. It became an independent state in {} and has \
                 about {} million inhabitants, who are called {}s. Other major cities include {}, {} and {}.",
                c.name,
                c.independence,
                c.population_m,
                demonym(&c.name),
                others[0],
                others[1],
                others[2]
            );
            docs.push(Document { title: c.name.clone(), text });
        }
        for (i, c) in self.cities.iter().enumerate() {
            let country = &self.countries[c.country];
            let role = if country.capital == i {
                format!("the capital of {}", country.name)
            } else {
                format!("a city in {}", country.name)
            };
            let mut text = format!(
                "{} is {role}. It was founded in {} and has a population of about {}.",
                c.name,
                c.founded,
                with_commas(c.population)
            );
            if let Some(r) = c.river {
                text.push_str(&format!(" The city lies on the banks of the {}.", self.river_title(r)));
            }
            docs.push(Document { title: c.name.clone(), text });
        }
        for (s, sea) in self.seas.iter().enumerate() {
            let shores: Vec<&str> = sea.countries.iter().take(4).map(|&c| self.countries[c].name.as_str()).collect();
            let rivers: Vec<String> = self
                .rivers
                .iter()
                .enumerate()
                .filter(|(_, r)| r.sea == s)
                .take(3)
                .map(|(i, _)| self.river_title(i))
                .collect();
            let mut text = format!("The {} is a sea", sea.title);
            if !shores.is_empty() {
                text.push_str(&format!(" bordered by {}", shores.join(", ")));
            }
            text.push('.');
            if !rivers.is_empty() {
                text.push_str(&format!(" Rivers that drain into it include the {}.", rivers.join(", the ")));
            }
            docs.push(Document { title: sea.title.clone(), text });
        }
        for (r, river) in self.rivers.iter().enumerate() {
            let through: Vec<&str> = river.cities.iter().map(|&c| self.cities[c].name.as_str()).collect();
            let mut text = format!(
                "The {} is a river in {}, about {} km long, that flows into the {}.",
                self.river_title(r),
                self.countries[river.country].name,
                river.length_km,
                self.seas[river.sea].title
            );
            if !through.is_empty() {
                text.push_str(&format!(" It flows through {}.", join_and(&through)));
            }
            docs.push(Document { title: self.river_title(r), text });
        }
        for p in &self.people {
            let verb = if p.born < 1935 { "was" } else { "is" };
            let pron = if p.female { "She" } else { "He" };
            let country = &self.countries[self.cities[p.city].country].name;
            let mut text = format!(
                "{} (born {} in {}) {verb} {} {}.",
                p.full(),
                p.born,
                self.place(p.city),
                a_an(&demonym(country)),
                p.profession
            );
            match p.works.len() {
                0 => text.push_str(&format!(
                    " {pron} spent most of {} life in {}.",
                    if p.female { "her" } else { "his" },
                    self.cities[p.city].name
                )),
                n => {
                    let mut works: Vec<&(u32, String)> = p.works.iter().collect();
                    works.sort_by_key(|w| w.0);
                    let shown: Vec<&str> = works.iter().take(3).map(|w| w.1.as_str()).collect();
                    text.push_str(&format!(" {pron} {}.", join_and(&shown)));
                    if n > 3 {
                        let more = if n == 4 { "one other work".to_string() } else { format!("{} other works", n - 3) };
                        text.push_str(&format!(" {} is also credited with {more}.", p.last));
                    }
                }
            }
            docs.push(Document { title: p.full(), text });
        }
        for c in &self.companies {
            let mut text = format!(
                "{} is {} company headquartered in {}. It was founded in {} by {}.",
                c.name,
                a_an(c.industry),
                self.place(c.city),
                c.founded,
                self.people[c.founder].full()
            );
            let projects: Vec<&str> = c.projects.iter().take(2).map(|&s| self.structures[s].name.as_str()).collect();
            if !projects.is_empty() {
                text.push_str(&format!(" Its projects include the {}.", projects.join(" and the ")));
            }
            docs.push(Document { title: c.name.clone(), text });
        }
        for s in &self.structures {
            let text = format!(
                "The {} is a {} in {}. It was built by {} and completed in {}, to a design by {}.",
                s.name,
                s.kind.to_lowercase(),
                self.place(s.city),
                self.companies[s.company].name,
                s.year,
                self.people[s.architect].full()
            );
            docs.push(Document { title: s.name.clone(), text });
        }
        for b in &self.books {
            let text = format!(
                "{} is {} by {}, first published in {}. It is set in {} and is among the best-known works of {} {}.",
                b.title,
                a_an(b.genre),
                self.people[b.author].full(),
                b.year,
                self.place(b.setting),
                demonym(&self.countries[self.cities[self.people[b.author].city].country].name),
                if b.genre == "poetry collection" { "poetry" } else { "literature" }
            );
            docs.push(Document { title: b.title.clone(), text });
        }
        for inv in &self.inventions {
            let mut text = format!(
                "The {} is {} invented by {} in {}.",
                inv.name,
                a_an(inv.what),
                self.people[inv.inventor].full(),
                inv.year
            );
            if let Some(m) = inv.maker {
                text.push_str(&format!(" It was later manufactured by {}.", self.companies[m].name));
            }
            docs.push(Document { title: inv.name.clone(), text });
        }
        for c in &self.clubs {
            let text = format!(
                "{} is {} club based in {}. It was founded in {} by {} and plays its home games at {}.",
                c.name,
                a_an(c.sport),
                self.place(c.city),
                c.founded,
                self.people[c.founder].full(),
                c.stadium
            );
            docs.push(Document { title: c.name.clone(), text });
        }
        for inst in &self.institutes {
            let text = format!(
                "The {} is {} institution in {}. It was founded in {} by {}.",
                inst.name,
                a_an(inst.field),
                self.place(inst.city),
                inst.founded,
                self.people[inst.founder].full()
            );
            docs.push(Document { title: inst.name.clone(), text });
        }
        docs
    }

    // -----------------------------------------------------------------------------------------------------
    // Questions

    fn person_answer(&self, p: usize) -> (String, Vec<String>, AnswerKind) {
        (self.people[p].full(), vec![self.people[p].last.clone()], AnswerKind::Person)
    }

    fn company_answer(&self, c: usize) -> (String, Vec<String>, AnswerKind) {
        (self.companies[c].name.clone(), vec![self.companies[c].base.clone()], AnswerKind::Company)
    }

    fn city_answer(&self, c: usize) -> (String, Vec<String>, AnswerKind) {
        (self.cities[c].name.clone(), Vec::new(), AnswerKind::City)
    }

    fn year_answer(year: u32) -> (String, Vec<String>, AnswerKind) {
        (year.to_string(), Vec::new(), AnswerKind::Year)
    }

    fn phrase(&mut self, options: &[&str], name: &str) -> String {
        pick(&mut self.rng, options).replace("{}", name)
    }

    /// One question of template `t`, or `None` when the random pick does not fit the template.
    fn question(&mut self, t: usize) -> Option<Question> {
        let rng = &mut self.rng;
        let company = rng.random_range(0..COMPANIES);
        let institute = rng.random_range(0..INSTITUTES);
        let country = rng.random_range(0..COUNTRIES);
        let person = rng.random_range(0..PEOPLE);
        let book = rng.random_range(0..BOOKS);
        let structure = rng.random_range(0..STRUCTURES);
        let invention = rng.random_range(0..INVENTIONS);
        let club = rng.random_range(0..CLUBS);
        let river = rng.random_range(0..RIVERS);
        let city = rng.random_range(0..self.cities.len());
        let hop =
            |query: String, title: &str, finds: &str| Hop { query, title: title.to_string(), finds: finds.to_string() };
        let (question, (answer, aliases, kind), hops) = match t {
            0 => {
                let c = &self.companies[company];
                let (name, year) = (c.name.clone(), c.founded);
                let q = self.phrase(&["{} founded", "when was {} founded", "{} company history"], &name);
                (
                    format!("In which year was {name} founded?"),
                    Self::year_answer(year),
                    vec![hop(q, &name, &year.to_string())],
                )
            }
            1 => {
                let i = &self.institutes[institute];
                let (name, year) = (i.name.clone(), i.founded);
                let q = self.phrase(&["{} founding year", "when was the {} founded", "the {}"], &name);
                (
                    format!("When was the {name} founded?"),
                    Self::year_answer(year),
                    vec![hop(q, &name, &year.to_string())],
                )
            }
            2 => {
                let name = self.companies[company].name.clone();
                let founder = self.companies[company].founder;
                let q = self.phrase(&["{} founder", "who founded {}", "{} history"], &name);
                (
                    format!("Who founded {name}?"),
                    self.person_answer(founder),
                    vec![hop(q, &name, &self.people[founder].full())],
                )
            }
            3 => {
                let name = self.countries[country].name.clone();
                let capital = self.countries[country].capital;
                let q = self.phrase(&["capital of {}", "{} capital city", "{} country"], &name);
                (
                    format!("What is the capital of {name}?"),
                    self.city_answer(capital),
                    vec![hop(q, &name, &self.cities[capital].name)],
                )
            }
            4 => {
                let name = self.people[person].full();
                let born_in = self.people[person].city;
                let q = self.phrase(&["{} birthplace", "where was {} born", "{} biography"], &name);
                (
                    format!("Where was {name} born?"),
                    self.city_answer(born_in),
                    vec![hop(q, &name, &self.cities[born_in].name)],
                )
            }
            5 => {
                let b = &self.books[book];
                let (title, author, genre) = (b.title.clone(), b.author, b.genre);
                let q = self.phrase(&["{} author", "who wrote {}", "{}"], &title);
                (
                    format!("Who wrote the {genre} {title}?"),
                    self.person_answer(author),
                    vec![hop(q, &title, &self.people[author].full())],
                )
            }
            6 => {
                let s = &self.structures[structure];
                let (name, company) = (s.name.clone(), s.company);
                let q = self.phrase(&["{} construction", "who built the {}", "{} builder"], &name);
                (
                    format!("Which company built the {name}?"),
                    self.company_answer(company),
                    vec![hop(q, &name, &self.companies[company].name)],
                )
            }
            7 => {
                let i = &self.inventions[invention];
                let (name, inventor) = (i.name.clone(), i.inventor);
                let q = self.phrase(&["{} inventor", "who invented the {}", "history of the {}"], &name);
                (
                    format!("Who invented the {name}?"),
                    self.person_answer(inventor),
                    vec![hop(q, &name, &self.people[inventor].full())],
                )
            }
            8 => {
                let c = &self.clubs[club];
                let (name, city, sport) = (c.name.clone(), c.city, c.sport);
                let q = self.phrase(&["{} club", "{} home city", "{}"], &name);
                (
                    format!("In which city is the {sport} club {name} based?"),
                    self.city_answer(city),
                    vec![hop(q, &name, &self.cities[city].name)],
                )
            }
            9 => {
                let title = self.river_title(river);
                let sea = self.rivers[river].sea;
                let q = self.phrase(&["{} mouth", "where does the {} flow", "{} course"], &title);
                let s = &self.seas[sea];
                let aliases = if s.of_form {
                    vec![format!("{} Sea", s.base), s.base.clone()]
                } else {
                    vec![format!("Sea of {}", s.base), s.base.clone()]
                };
                (
                    format!("Into which sea does the {title} flow?"),
                    (s.title.clone(), aliases, AnswerKind::Sea),
                    vec![hop(q, &title, &s.title)],
                )
            }
            10 => {
                let s = &self.structures[structure];
                let (name, company) = (s.name.clone(), s.company);
                let (co_name, founder) = (self.companies[company].name.clone(), self.companies[company].founder);
                let q1 = self.phrase(&["who built the {}", "{} construction company", "{} builder"], &name);
                let q2 = self.phrase(&["{} founder", "who founded {}"], &co_name);
                (
                    format!("Who founded the company that built the {name}?"),
                    self.person_answer(founder),
                    vec![hop(q1, &name, &co_name), hop(q2, &co_name, &self.people[founder].full())],
                )
            }
            11 => {
                let b = &self.books[book];
                let (title, author) = (b.title.clone(), b.author);
                let (author_name, born_in) = (self.people[author].full(), self.people[author].city);
                let q1 = self.phrase(&["{} author", "who wrote {}"], &title);
                let q2 = self.phrase(&["{} birthplace", "where was {} born", "{} biography"], &author_name);
                (
                    format!("In which city was the author of {title} born?"),
                    self.city_answer(born_in),
                    vec![hop(q1, &title, &author_name), hop(q2, &author_name, &self.cities[born_in].name)],
                )
            }
            12 => {
                let c = &self.cities[city];
                let country = &self.countries[c.country];
                if country.capital == city {
                    return None;
                }
                let (name, country_name, capital) = (c.name.clone(), country.name.clone(), country.capital);
                let q1 = self.phrase(&["{} city", "which country is {} in", "{}"], &name);
                let q2 = self.phrase(&["capital of {}", "{} capital city"], &country_name);
                (
                    format!("What is the capital of the country in which {name} is located?"),
                    self.city_answer(capital),
                    vec![hop(q1, &name, &country_name), hop(q2, &country_name, &self.cities[capital].name)],
                )
            }
            13 => {
                let (name, founder) = (self.companies[company].name.clone(), self.companies[company].founder);
                let (founder_name, born) = (self.people[founder].full(), self.people[founder].born);
                let q1 = self.phrase(&["{} founder", "who founded {}"], &name);
                let q2 = self.phrase(&["{} born", "{} biography", "{} birth year"], &founder_name);
                (
                    format!("In which year was the founder of {name} born?"),
                    Self::year_answer(born),
                    vec![hop(q1, &name, &founder_name), hop(q2, &founder_name, &born.to_string())],
                )
            }
            14 => {
                let (name, inventor) = (self.inventions[invention].name.clone(), self.inventions[invention].inventor);
                let (inventor_name, born) = (self.people[inventor].full(), self.people[inventor].born);
                let q1 = self.phrase(&["{} inventor", "who invented the {}"], &name);
                let q2 = self.phrase(&["{} born", "{} biography", "{} birth year"], &inventor_name);
                (
                    format!("In which year was the inventor of the {name} born?"),
                    Self::year_answer(born),
                    vec![hop(q1, &name, &inventor_name), hop(q2, &inventor_name, &born.to_string())],
                )
            }
            15 => {
                let born_in = self.people[person].city;
                let r = self.cities[born_in].river?;
                let (name, city_name, title) =
                    (self.people[person].full(), self.cities[born_in].name.clone(), self.river_title(r));
                let q1 = self.phrase(&["{} birthplace", "where was {} born"], &name);
                let q2 = self.phrase(&["{} river", "{} city"], &city_name);
                (
                    format!("Which river flows through the city where {name} was born?"),
                    (title.clone(), vec![self.rivers[r].base.clone()], AnswerKind::River),
                    vec![hop(q1, &name, &city_name), hop(q2, &city_name, &title)],
                )
            }
            16 => {
                let s = &self.structures[structure];
                let (name, company) = (s.name.clone(), s.company);
                let (co_name, hq) = (self.companies[company].name.clone(), self.companies[company].city);
                let q1 = self.phrase(&["who built the {}", "{} builder"], &name);
                let q2 = self.phrase(&["{} headquarters", "where is {} based"], &co_name);
                (
                    format!("In which city is the company that built the {name} headquartered?"),
                    self.city_answer(hq),
                    vec![hop(q1, &name, &co_name), hop(q2, &co_name, &self.cities[hq].name)],
                )
            }
            17 => {
                let (name, inventor) = (self.inventions[invention].name.clone(), self.inventions[invention].inventor);
                let inventor_name = self.people[inventor].full();
                let country = self.cities[self.people[inventor].city].country;
                let country_name = self.countries[country].name.clone();
                let q1 = self.phrase(&["{} inventor", "who invented the {}"], &name);
                let q2 = self.phrase(&["{} birthplace", "where was {} born", "{} biography"], &inventor_name);
                (
                    format!("In which country was the inventor of the {name} born?"),
                    (country_name.clone(), vec![demonym(&country_name)], AnswerKind::Country),
                    vec![hop(q1, &name, &inventor_name), hop(q2, &inventor_name, &country_name)],
                )
            }
            18 => {
                let r = self.cities[city].river?;
                let (city_name, title) = (self.cities[city].name.clone(), self.river_title(r));
                let s = &self.seas[self.rivers[r].sea];
                let (sea_title, sea_base, of_form) = (s.title.clone(), s.base.clone(), s.of_form);
                let aliases = if of_form {
                    vec![format!("{sea_base} Sea"), sea_base]
                } else {
                    vec![format!("Sea of {sea_base}"), sea_base]
                };
                let q1 = self.phrase(&["{} river", "{} city"], &city_name);
                let q2 = self.phrase(&["{} mouth", "where does the {} flow"], &title);
                (
                    format!("Into which sea does the river that flows through {city_name} empty?"),
                    (sea_title.clone(), aliases, AnswerKind::Sea),
                    vec![hop(q1, &city_name, &title), hop(q2, &title, &sea_title)],
                )
            }
            _ => {
                let (name, founder, sport) =
                    (self.clubs[club].name.clone(), self.clubs[club].founder, self.clubs[club].sport);
                let (founder_name, born_in) = (self.people[founder].full(), self.people[founder].city);
                let q1 = self.phrase(&["{} founder", "who founded {}", "{} club history"], &name);
                let q2 = self.phrase(&["{} birthplace", "where was {} born"], &founder_name);
                (
                    format!("Where was the founder of the {sport} club {name} born?"),
                    self.city_answer(born_in),
                    vec![hop(q1, &name, &founder_name), hop(q2, &founder_name, &self.cities[born_in].name)],
                )
            }
        };
        Some(Question { question, answer, aliases, kind, hops })
    }

    fn questions(&mut self, count: usize) -> Vec<Question> {
        const TEMPLATES: usize = 20;
        let mut out = Vec::with_capacity(count);
        let mut seen = HashSet::new();
        let mut t = 0;
        while out.len() < count {
            for _ in 0..1000 {
                if let Some(q) = self.question(t % TEMPLATES)
                    && seen.insert(q.question.clone())
                {
                    out.push(q);
                    break;
                }
            }
            t += 1;
        }
        out
    }

    fn lexicon(&self) -> (HashMap<String, AnswerKind>, HashSet<String>) {
        let mut lex = HashMap::new();
        let mut add = |name: &str, kind| {
            lex.insert(name.to_lowercase(), kind);
        };
        for c in &self.countries {
            add(&c.name, AnswerKind::Country);
            add(&demonym(&c.name), AnswerKind::Country);
        }
        for c in &self.cities {
            add(&c.name, AnswerKind::City);
        }
        for s in &self.seas {
            add(&s.base, AnswerKind::Sea);
        }
        for r in &self.rivers {
            add(&r.base, AnswerKind::River);
        }
        for c in &self.companies {
            add(&c.base, AnswerKind::Company);
        }
        for p in &self.people {
            add(&p.last, AnswerKind::Person);
        }
        let first = self.people.iter().map(|p| p.first.to_lowercase()).collect();
        (lex, first)
    }
}

fn pick<'a>(rng: &mut ChaCha8Rng, options: &[&'a str]) -> &'a str {
    options.choose(rng).copied().unwrap_or("")
}

/// The word with its indefinite article ("an arts", "a steel").
fn a_an(word: &str) -> String {
    let article = if word.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']) { "an" } else { "a" };
    format!("{article} {word}")
}

fn join_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Generates the world of `seed` with `questions` questions.
pub fn generate(seed: u64, questions: usize) -> World {
    let mut b = Builder::build(seed);
    let docs = b.documents();
    let questions = b.questions(questions);
    let (lexicon, first_names) = b.lexicon();
    World { docs, questions, lexicon, first_names }
}
